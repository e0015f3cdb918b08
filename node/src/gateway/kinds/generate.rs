//! `generate` and `embed`: one model or embedder deployment, streamed tokens or vectors.

use super::*;

/// Generates on a replica of `model`, sending each piece of text to the job's watchers as a
/// `token`, and stopping when the job is cancelled (checked between polls).
pub(super) async fn stream_tokens(
    env: &Env,
    model: &str,
    spec: GenerateSpec,
    emit: &Emit,
) -> Result<(String, Finished), JobFailure> {
    generate_failover(
        &env.scope,
        model,
        spec,
        |t| emit.token(t),
        || emit.job.is_cancelled(),
        Duration::from_millis(250),
    )
    .await
    // A model's own failure keeps its code and words (`StreamError` is transparent over it).
    .map_err(|e| JobFailure::new(e.code(), e.to_string()))
}

pub(super) async fn generate(env: &Env, g: GenerateJob, emit: &Emit) -> Result<Value, JobFailure> {
    let named = g.deployment.clone();
    let model = read_here(&env.raft, move |s| {
        pick_deployment(s, "model", named.as_deref())
    })
    .await??;
    // An instruct model answers a prompt through its chat template (a raw prompt makes
    // SmolLM2-Instruct stop at once), as `arbor local generate` does.
    let spec = GenerateSpec::chat(
        vec![ChatMessage {
            role: ChatRole::User,
            content: g.prompt,
        }],
        g.max_tokens,
    );
    let (text, finished) = stream_tokens(env, &model, spec, emit).await?;
    data(GenerateResult {
        deployment: model,
        text,
        finish_reason: finished.reason,
        prompt_tokens: finished.prompt_tokens,
        generated_tokens: finished.generated_tokens,
    })
}

pub(super) async fn embed(env: &Env, e: EmbedJob) -> Result<Value, JobFailure> {
    let named = e.deployment.clone();
    let deployment = read_here(&env.raft, move |s| {
        pick_deployment(s, "embedder", named.as_deref())
    })
    .await??;
    let request = EmbedRequest { texts: e.texts };
    let reply = ask_idempotent(env, &deployment, false, |port| {
        ReplicaMsg::Embed(Wire::new(request.clone()), port)
    })
    .await?;
    let result = reply.map_err(|f| {
        let code = f.code();
        match f {
            EmbedFailure::Invalid(why) | EmbedFailure::Model(why) => JobFailure::new(code, why),
            overloaded => JobFailure::new(code, overloaded.to_string()),
        }
    })?;
    data(EmbedResult {
        deployment,
        dim: result.dim,
        vectors: result.vectors,
    })
}
