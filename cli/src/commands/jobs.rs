//! `arbor jobs|job|cancel`.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{GatewayArgs, failed};
use arbor_proto::gateway::JobView;

/// `arbor jobs [--limit N] [--json]`: the most recent jobs, newest first.
pub async fn jobs(gw: &GatewayArgs, limit: u32, json: bool) -> anyhow::Result<()> {
    let mut client = gw.connect().await?;
    let jobs = client
        .status(None, Some(limit))
        .await
        .map_err(|e| failed("status", e))?;
    if json {
        println!("{}", serde_json::json!({ "jobs": jobs }));
    } else {
        print!("{}", jobs_table(&jobs, now_ms()));
    }
    Ok(())
}

/// `arbor job ID [--json]`: one job's record.
pub async fn job(gw: &GatewayArgs, id: String, json: bool) -> anyhow::Result<()> {
    let mut client = gw.connect().await?;
    let views = client
        .status(Some(&id), None)
        .await
        .map_err(|e| failed("status", e))?;
    let Some(view) = views.into_iter().next() else {
        anyhow::bail!("status failed: the gateway sent no record for job {id}");
    };
    if json {
        println!("{}", serde_json::to_string(&view)?);
    } else {
        print!("{}", job_text(&view, now_ms()));
    }
    Ok(())
}

/// `arbor cancel ID`.
pub async fn cancel(gw: &GatewayArgs, id: String) -> anyhow::Result<()> {
    let mut client = gw.connect().await?;
    client.cancel(&id).await.map_err(|e| failed("cancel", e))?;
    println!("job {id} cancelled");
    Ok(())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// When a job was submitted, as an age ("12s ago") for the last day, else a UTC time.
pub fn submitted(ms: u64, now_ms: u64) -> String {
    let age = now_ms.saturating_sub(ms) / 1000;
    match age {
        0..60 => format!("{age}s ago"),
        60..3600 => format!("{}m ago", age / 60),
        3600..86400 => format!("{}h ago", age / 3600),
        _ => humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string(),
    }
}

fn percent(progress: f32) -> String {
    format!("{:.0}%", (progress.clamp(0.0, 1.0) * 100.0).floor())
}

/// `arbor jobs` as a table.
pub fn jobs_table(jobs: &[JobView], now_ms: u64) -> String {
    if jobs.is_empty() {
        return "no jobs\n".into();
    }
    let rows: Vec<[String; 6]> = jobs
        .iter()
        .map(|j| {
            [
                j.id.clone(),
                j.kind.clone(),
                j.state.as_str().into(),
                percent(j.progress),
                j.node.to_string(),
                submitted(j.submitted_ms, now_ms),
            ]
        })
        .collect();
    let header = ["ID", "KIND", "STATE", "PROGRESS", "NODE", "SUBMITTED"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: [&str; 6]| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                let _ = write!(l, "{cell:<w$}  ");
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header);
    for row in &rows {
        line(row.each_ref().map(String::as_str));
    }
    out
}

/// `arbor job ID` as text: one field a line, the result as JSON.
pub fn job_text(j: &JobView, now_ms: u64) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "job        {}", j.id);
    let _ = writeln!(out, "kind       {}", j.kind);
    let _ = writeln!(out, "state      {}", j.state.as_str());
    if let Some(why) = &j.reason {
        let _ = writeln!(out, "reason     {why}");
    }
    let _ = writeln!(out, "progress   {}", percent(j.progress));
    let _ = writeln!(out, "node       {}", j.node);
    let _ = writeln!(out, "owner      {}", j.owner);
    let _ = writeln!(out, "submitted  {}", submitted(j.submitted_ms, now_ms));
    let _ = writeln!(
        out,
        "recorded   {}",
        if j.recorded {
            "yes (in the control plane)"
        } else {
            "no (only on its node)"
        }
    );
    if let Some(result) = &j.result {
        let _ = writeln!(out, "result     {result}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use arbor_proto::gateway::JobState;

    fn view(id: &str, state: JobState, progress: f32, submitted_ms: u64) -> JobView {
        JobView {
            id: id.into(),
            kind: "ingest".into(),
            state,
            reason: None,
            progress,
            node: 2,
            owner: "t1".into(),
            submitted_ms,
            recorded: true,
            result: None,
        }
    }

    #[test]
    fn ages_read_like_a_person_would_say_them() {
        let now = 1_700_000_000_000;
        assert_eq!(submitted(now - 5_000, now), "5s ago");
        assert_eq!(submitted(now - 125_000, now), "2m ago");
        assert_eq!(submitted(now - 7_200_000, now), "2h ago");
        assert_eq!(submitted(0, now), "1970-01-01T00:00:00Z");
        // A clock behind the node's is no negative age.
        assert_eq!(submitted(now + 5_000, now), "0s ago");
    }

    #[test]
    fn the_jobs_table_aligns_its_columns() {
        let now = 1_700_000_000_000;
        let t = jobs_table(
            &[
                view("j-long-id-1", JobState::Running, 0.426, now - 3_000),
                view("j2", JobState::Succeeded, 1.0, now - 61_000),
            ],
            now,
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "ID           KIND    STATE      PROGRESS  NODE  SUBMITTED"
        );
        assert_eq!(
            lines[1],
            "j-long-id-1  ingest  running    42%       2     3s ago"
        );
        assert_eq!(
            lines[2],
            "j2           ingest  succeeded  100%      2     1m ago"
        );
        assert_eq!(jobs_table(&[], now), "no jobs\n");
    }

    #[test]
    fn one_job_prints_its_reason_and_result() {
        let mut j = view("j9", JobState::Failed, 0.5, 0);
        j.reason = Some("partition 2 is down".into());
        j.result = Some(serde_json::json!({"documents": 3}));
        let t = job_text(&j, 1_000);
        assert!(t.contains("state      failed\n"), "{t}");
        assert!(t.contains("reason     partition 2 is down\n"), "{t}");
        assert!(t.contains("result     {\"documents\":3}\n"), "{t}");
    }
}
