//! `deploy`, `scale` and `rollback`: a deployment file parsed and proposed (created, updated,
//! scaled or unchanged), a new replica count, a return to the previous revision.

use super::*;

pub(super) async fn deploy(env: &Env, d: DeployJob) -> Result<Value, JobFailure> {
    let text = Value::Object(d.deployment).to_string();
    let spec = crate::deployment_file::parse(Path::new("job.deployment.json"), &text)
        .map_err(|e| JobFailure::field(ErrorCode::InvalidJob, "job.deployment", e.to_string()))?;
    // The model files are the node's: checked here, where a client cannot.
    let kind = spec
        .kind
        .parse::<arbor_actors::kinds::Kind>()
        .map_err(|e| {
            JobFailure::field(ErrorCode::InvalidJob, "job.deployment.kind", e.to_string())
        })?;
    let models_dir = arbor_kernels::models::models_dir(None);
    let (config, memory) = (spec.config.clone(), spec.resources.memory.0);
    tokio::task::spawn_blocking(move || {
        arbor_actors::kinds::check_model_files(kind, &config, memory, &models_dir)
    })
    .await
    .map_err(|e| internal(format!("checking the model failed: {e}")))?
    .map_err(|e| JobFailure::field(ErrorCode::InvalidJob, "job.deployment.config", e))?;
    deployed(env, spec.name.clone(), ControlRequest::Deploy(spec)).await
}

/// Carries out a request that changes deployment `name` (deploy, scale, rollback) and
/// answers with its revision and what changed.
pub(super) async fn deployed(
    env: &Env,
    name: String,
    request: ControlRequest,
) -> Result<Value, JobFailure> {
    match control_request(&env.raft, request).await? {
        ControlReply::Deployed { revision, change } => data(DeployResult {
            name,
            revision,
            change,
        }),
        other => Err(internal(format!("unexpected reply {other:?}"))),
    }
}
