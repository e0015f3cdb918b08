//! `deploy`: a deployment file, parsed and proposed (created, updated or unchanged).

use super::*;

pub(super) async fn deploy(env: &Env, d: DeployJob) -> Result<Value, JobFailure> {
    let text = Value::Object(d.deployment).to_string();
    let spec = crate::deployment_file::parse(Path::new("job.deployment.json"), &text)
        .map_err(|e| JobFailure::field(ErrorCode::InvalidJob, "job.deployment", e.to_string()))?;
    let name = spec.name.clone();
    match control_request(&env.raft, ControlRequest::Deploy(spec)).await? {
        ControlReply::Deployed { revision, change } => data(DeployResult {
            name,
            revision,
            change,
        }),
        other => Err(internal(format!("unexpected reply {other:?}"))),
    }
}
