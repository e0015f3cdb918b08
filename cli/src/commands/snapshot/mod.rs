//! `arbor collection snapshot|restore` and `arbor cluster backup|restore`: a collection's
//! rows, or the control plane's definitions, in a sealed file (`file`) on the machine that
//! runs the command, and back into a cluster (this one or another).
//!
//! A partition is read the way a replica placed anew copies its primary: its rows in id
//! order, spooled to disk, then the changes since the first page, applied over them; a page
//! read from a primary with another history (a failover during the snapshot) starts that
//! partition again. Each partition is thus in the file as its primary held it at one
//! sequence number, recorded with it.

pub mod file;

use std::collections::BTreeMap;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, anyhow, bail};
use arbor_client::GatewayClient;
use arbor_proto::gateway::{CreateCollectionJob, JobSpec};
use arbor_proto::results::CollectionsResult;
use arbor_proto::snapshot::{
    ClusterBackup, ExportFrom, ExportJob, ExportPage, ImportJob, ImportRow, Imported,
    PackedExportPage, PackedRows, RestoreJob, Restored, RowData,
};
use arbor_scheduler::state::CollectionSpec;
use futures::StreamExt;
use indicatif::ProgressBar;

use super::{GatewayArgs, parse_data, rows_bar, run_job};
use file::{
    BACKUP_MAGIC, BackupFile, PayloadReader, Row, SNAPSHOT_MAGIC, SealedWriter, SnapshotHeader,
    encode_row, encode_section,
};

/// Rows asked per export page.
const EXPORT_PAGE_ROWS: u32 = 2048;
/// About the most bytes of rows (packed) one import job carries.
const IMPORT_JOB_BYTES: usize = 2 << 20;
/// How often one partition's export starts again after a failover before the snapshot gives
/// up.
const EXPORT_TRIES: u32 = 5;
/// Partitions a snapshot reads at once.
const READ_IN_FLIGHT: usize = 4;
/// Import jobs a restore keeps in flight (after its first).
const RESTORE_IN_FLIGHT: usize = 4;
/// How long a restore waits for the new collection to take its first rows.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The collection's definition, as `backup` gives it.
async fn definition(client: &mut GatewayClient, name: &str) -> anyhow::Result<serde_json::Value> {
    let backup: ClusterBackup =
        parse_data(run_job(client, JobSpec::Backup, "backup").await?, "backup")?;
    backup
        .collections
        .into_iter()
        .find(|c| c["name"] == name)
        .ok_or_else(|| anyhow!("there is no collection {name:?}; see `arbor collections`"))
}

/// `arbor collection snapshot NAME --out FILE`.
pub async fn snapshot(gw: &GatewayArgs, name: &str, out: &Path) -> anyhow::Result<()> {
    let mut client = gw.connect().await?;
    let collection = definition(&mut client, name).await?;
    let spec: CollectionSpec = serde_json::from_value(collection.clone())
        .context("the gateway's collection definition is not one this client reads")?;
    let header = SnapshotHeader {
        collection,
        dimension: spec.dimension,
        partitions: spec.partitions,
        taken_at: now_secs(),
        arbor: env!("CARGO_PKG_VERSION").into(),
    };
    let mut writer = SealedWriter::create(out, SNAPSHOT_MAGIC)
        .with_context(|| format!("cannot write {}", out.display()))?;
    // ctrl-c drops the reading (its spool files with it) and removes the partial file.
    let written = tokio::select! {
        written = write_snapshot(gw, name, &header, &mut writer, out) => written,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted: no snapshot was written")),
    };
    match written {
        Ok(rows) => {
            let bytes = writer
                .seal()
                .with_context(|| format!("cannot write {}", out.display()))?;
            println!(
                "snapshot of {name:?}: {rows} rows in {} partitions, {:.1} MiB, written to {}",
                spec.partitions,
                bytes as f64 / (1 << 20) as f64,
                out.display()
            );
            Ok(())
        }
        Err(e) => {
            writer.abandon();
            Err(e)
        }
    }
}

async fn write_snapshot(
    gw: &GatewayArgs,
    name: &str,
    header: &SnapshotHeader,
    writer: &mut SealedWriter,
    out: &Path,
) -> anyhow::Result<u64> {
    let mut line = serde_json::to_vec(header)?;
    line.push(b'\n');
    writer.write(&line)?;
    let bar = rows_bar(&format!("snapshot {name}"), None);
    // Partitions are read at once, each on a connection of its own (one page at a time,
    // one after another, the nodes mostly waited), and written in order as they end.
    let reads = futures::stream::iter(0..header.partitions)
        .map(|partition| read_with_retries(gw, name, partition, header.dimension, out, &bar))
        .buffered(READ_IN_FLIGHT);
    futures::pin_mut!(reads);
    let mut total = 0;
    let mut partition = 0;
    while let Some(read) = reads.next().await {
        total += read?.write_to(writer, partition, header.dimension)?;
        partition += 1;
    }
    bar.finish_and_clear();
    Ok(total)
}

/// Reads one partition on a connection of its own, again while its primary changes during
/// the read (at most [`EXPORT_TRIES`] times).
async fn read_with_retries(
    gw: &GatewayArgs,
    name: &str,
    partition: u32,
    dim: u32,
    out: &Path,
    bar: &ProgressBar,
) -> anyhow::Result<ReadPartition> {
    let mut client = gw.connect().await?;
    for _ in 1..EXPORT_TRIES {
        match read_partition(&mut client, name, partition, dim, out, bar).await? {
            Some(read) => return Ok(read),
            None => bar.println(format!(
                "partition {partition}: its primary changed during the snapshot; reading it again"
            )),
        }
    }
    read_partition(&mut client, name, partition, dim, out, bar)
        .await?
        .ok_or_else(|| {
            anyhow!(
                "partition {partition} of {name:?} changed primary {EXPORT_TRIES} times during the snapshot; try again once the cluster is steady"
            )
        })
}

/// A spool file, removed when dropped: a snapshot that fails or is interrupted leaves none.
struct Spool(PathBuf);

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// One partition as read: the rows spooled to disk, and the changes made after the first
/// page (`None`: deleted), which win over the spooled rows.
struct ReadPartition {
    spool: Spool,
    seq: u64,
    changes: BTreeMap<u64, Option<RowData>>,
}

impl ReadPartition {
    /// Writes its section; returns its row count.
    fn write_to(self, writer: &mut SealedWriter, partition: u32, dim: u32) -> anyhow::Result<u64> {
        let at = writer.position()?;
        let mut buf = Vec::new();
        encode_section(&mut buf, partition, self.seq, 0);
        writer.write(&buf)?;
        let mut rows = 0;
        let mut spool = BufReader::new(std::fs::File::open(&self.spool.0)?);
        while let Some(row) = spooled_row(&mut spool, dim)? {
            if self.changes.contains_key(&row.id) {
                continue;
            }
            buf.clear();
            encode_row(&mut buf, row.id, &row.vector, &row.metadata);
            writer.write(&buf)?;
            rows += 1;
        }
        for (id, row) in &self.changes {
            if let Some(row) = row {
                buf.clear();
                encode_row(&mut buf, *id, &row.vector, &row.metadata);
                writer.write(&buf)?;
                rows += 1;
            }
        }
        writer.patch_u64(at + 12, rows)?;
        Ok(rows)
    }
}

/// The next row of a spool written by [`encode_row`], `None` at its end.
fn spooled_row(input: &mut impl Read, dim: u32) -> std::io::Result<Option<Row>> {
    let mut id = [0u8; 8];
    match input.read_exact(&mut id) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut len = [0u8; 4];
    input.read_exact(&mut len)?;
    let mut text = vec![0; u32::from_le_bytes(len) as usize];
    input.read_exact(&mut text)?;
    let mut raw = vec![0; dim as usize * 4];
    input.read_exact(&mut raw)?;
    Ok(Some(Row {
        id: u64::from_le_bytes(id),
        metadata: String::from_utf8(text)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?,
        vector: raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    }))
}

async fn export_page(
    client: &mut GatewayClient,
    collection: &str,
    partition: u32,
    from: ExportFrom,
) -> anyhow::Result<ExportPage> {
    let job = JobSpec::Export(ExportJob {
        collection: collection.to_owned(),
        partition,
        from,
        limit: EXPORT_PAGE_ROWS,
        packed: true,
    });
    let page: PackedExportPage = parse_data(run_job(client, job, "export").await?, "export")?;
    page.unpack()
        .with_context(|| format!("partition {partition} sent a page that does not unpack"))
}

/// Reads a partition from its primary; `None` when a page came from a primary with another
/// history than the first page's (read it again).
async fn read_partition(
    client: &mut GatewayClient,
    collection: &str,
    partition: u32,
    dim: u32,
    out: &Path,
    bar: &ProgressBar,
) -> anyhow::Result<Option<ReadPartition>> {
    let mut spool_path = out.as_os_str().to_owned();
    spool_path.push(format!(".partition-{partition}"));
    let spool_path = Spool(PathBuf::from(spool_path));
    let mut spool = BufWriter::new(
        std::fs::File::create(&spool_path.0)
            .with_context(|| format!("cannot write {}", spool_path.0.display()))?,
    );
    let first = export_page(
        client,
        collection,
        partition,
        ExportFrom::Rows { after: None },
    )
    .await?;
    let (start, history) = (first.seq, first.history.clone());
    let mut page = first;
    let mut buf = Vec::new();
    loop {
        if page.history != history {
            return Ok(None);
        }
        for row in &page.rows {
            if let Some(data) = &row.row {
                if data.vector.len() != dim as usize {
                    bail!(
                        "partition {partition} sent row {} with {} values, not {dim}",
                        row.id,
                        data.vector.len()
                    );
                }
                buf.clear();
                encode_row(&mut buf, row.id, &data.vector, &data.metadata);
                spool.write_all(&buf)?;
                bar.inc(1);
            }
        }
        match page.next {
            Some(from @ ExportFrom::Rows { .. }) => {
                page = export_page(client, collection, partition, from).await?;
            }
            _ => break,
        }
    }
    spool.flush()?;
    drop(spool);
    // Everything written after the first page: rows and deletes in (seq, id) order.
    let mut changes = BTreeMap::new();
    let mut from = ExportFrom::Changes {
        after: (start, u64::MAX),
    };
    let seq = loop {
        let page = export_page(client, collection, partition, from).await?;
        if page.history != history {
            return Ok(None);
        }
        for row in page.rows {
            changes.insert(row.id, row.row);
        }
        match page.next {
            Some(next) => from = next,
            None => break page.seq,
        }
    };
    Ok(Some(ReadPartition {
        spool: spool_path,
        seq,
        changes,
    }))
}

/// `arbor collection restore FILE [--as NAME]`.
pub async fn restore(gw: &GatewayArgs, path: &Path, name: Option<String>) -> anyhow::Result<()> {
    let payload = file::verify(path, SNAPSHOT_MAGIC, "a collection snapshot")?;
    // Read through once before anything is made: a file that does not parse changes nothing.
    let (header, rows) = {
        let mut r = PayloadReader::open(path, SNAPSHOT_MAGIC, payload)?;
        let header = r.header()?;
        let mut rows = 0u64;
        let mut seen = Vec::new();
        while let Some((partition, _, n)) = r.section()? {
            if partition >= header.partitions || seen.contains(&partition) {
                bail!(
                    "{} holds partition {partition} twice or out of 0..{}; nothing was restored",
                    path.display(),
                    header.partitions
                );
            }
            seen.push(partition);
            for _ in 0..n {
                r.row(header.dimension)?;
            }
            rows += n;
        }
        (header, rows)
    };
    let spec: CollectionSpec = serde_json::from_value(header.collection.clone()).map_err(|e| {
        anyhow!(
            "{}: the collection's definition is not one this arbor reads ({e}); nothing was restored",
            path.display()
        )
    })?;
    let name = name.unwrap_or_else(|| spec.name.clone());
    let mut client = gw.connect().await?;
    let existing: CollectionsResult = parse_data(
        run_job(&mut client, JobSpec::Collections, "collections").await?,
        "collections",
    )?;
    if existing.collections.iter().any(|c| c.name == name) {
        bail!(
            "this cluster already has a collection {name:?}; nothing was restored (restore it --as another name, or delete it first)"
        );
    }
    let create = CreateCollectionJob {
        name: name.clone(),
        partitions: spec.partitions,
        replicas: spec.replication,
        embedder: spec.embedder.clone(),
        dimension: spec.dimension,
        metric: spec.metric.as_str().into(),
        cpu: Some(spec.resources.cpu.to_string()),
        memory: Some(spec.resources.memory.to_string()),
        coordinators: None,
        coordinator_cpu: None,
        coordinator_memory: None,
        model: None,
        index: Some(spec.index),
        quantization: Some(spec.quantization),
    };
    run_job(
        &mut client,
        JobSpec::CreateCollection(create),
        "create_collection",
    )
    .await?;
    let bar = rows_bar(&format!("restore {name}"), Some(rows));
    let mut r = PayloadReader::open(path, SNAPSHOT_MAGIC, payload)?;
    r.header()?;
    // The first job waits for the new collection to run; the rest go RESTORE_IN_FLIGHT at a
    // time, each on a connection of its own.
    let mut sender: Option<Sender> = None;
    let mut batch: Vec<ImportRow> = Vec::new();
    let mut bytes = 0;
    let mut written = 0;
    while let Some((_, _, n)) = r.section()? {
        for _ in 0..n {
            let row = r.row(header.dimension)?;
            // Packed: a vector's base64, and the metadata's text escaped in JSON.
            bytes += row.metadata.len() * 2 + row.vector.len() * 6 + 64;
            batch.push(ImportRow {
                id: row.id,
                vector: row.vector,
                metadata: row.metadata,
            });
            if bytes >= IMPORT_JOB_BYTES || batch.len() == arbor_proto::snapshot::MAX_IMPORT_ROWS {
                let rows = std::mem::take(&mut batch);
                bytes = 0;
                match &mut sender {
                    Some(sender) => sender.send(rows).await?,
                    None => {
                        written += import(&mut client, &name, rows, true).await?;
                        bar.set_position(written);
                        sender = Some(Sender::start(gw, &name, &bar).await?);
                    }
                }
            }
        }
    }
    match sender {
        Some(mut sender) => {
            if !batch.is_empty() {
                sender.send(batch).await?;
            }
            written += sender.finish().await?;
        }
        None if !batch.is_empty() => written += import(&mut client, &name, batch, true).await?,
        None => {}
    }
    bar.finish_and_clear();
    println!(
        "restored {written} rows into collection {name:?} ({} partitions × {} replicas) from {}",
        spec.partitions,
        spec.replication,
        path.display()
    );
    Ok(())
}

/// Import jobs sent by [`RESTORE_IN_FLIGHT`] tasks, each on a connection of its own.
struct Sender {
    jobs: Option<tokio::sync::mpsc::Sender<Vec<ImportRow>>>,
    tasks: tokio::task::JoinSet<anyhow::Result<u64>>,
}

impl Sender {
    async fn start(gw: &GatewayArgs, collection: &str, bar: &ProgressBar) -> anyhow::Result<Self> {
        let (tx, rx) = tokio::sync::mpsc::channel::<Vec<ImportRow>>(RESTORE_IN_FLIGHT);
        let rx = std::sync::Arc::new(tokio::sync::Mutex::new(rx));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..RESTORE_IN_FLIGHT {
            let mut client = gw.connect().await?;
            let (rx, bar, collection) = (rx.clone(), bar.clone(), collection.to_owned());
            tasks.spawn(async move {
                let mut written = 0;
                loop {
                    let next = rx.lock().await.recv().await;
                    let Some(rows) = next else {
                        client.close().await;
                        return Ok(written);
                    };
                    let n = import(&mut client, &collection, rows, false).await?;
                    written += n;
                    bar.inc(n);
                }
            });
        }
        Ok(Sender {
            jobs: Some(tx),
            tasks,
        })
    }

    /// Hands one job to the tasks; fails with the first task's error once they stopped.
    async fn send(&mut self, rows: Vec<ImportRow>) -> anyhow::Result<()> {
        let sent = match &self.jobs {
            Some(jobs) => jobs.send(rows).await.is_ok(),
            None => false,
        };
        if sent {
            return Ok(());
        }
        self.jobs = None;
        self.finish().await?;
        bail!("the restore's import tasks stopped")
    }

    /// Waits for the jobs handed over; the rows they wrote, or the first error.
    async fn finish(&mut self) -> anyhow::Result<u64> {
        self.jobs = None;
        let mut written = 0;
        while let Some(done) = self.tasks.join_next().await {
            match done {
                Ok(Ok(n)) => written += n,
                Ok(Err(e)) => {
                    self.tasks.abort_all();
                    return Err(e);
                }
                Err(e) => {
                    self.tasks.abort_all();
                    return Err(anyhow!("a restore task failed: {e}"));
                }
            }
        }
        Ok(written)
    }
}

/// One import job; the first waits (up to [`READY_TIMEOUT`]) for the new collection's
/// partitions and coordinator to run.
async fn import(
    client: &mut GatewayClient,
    collection: &str,
    rows: Vec<ImportRow>,
    first: bool,
) -> anyhow::Result<u64> {
    // Packed: a fraction of the JSON's size, and cheap for the gateway to read.
    let ids = rows.iter().map(|r| r.id).collect();
    let vectors: Vec<f32> = rows.iter().flat_map(|r| r.vector.iter().copied()).collect();
    let metadata = match rows.iter().all(|r| r.metadata.is_empty()) {
        true => Vec::new(),
        false => rows.into_iter().map(|r| r.metadata).collect(),
    };
    let job = JobSpec::Import(ImportJob {
        collection: collection.to_owned(),
        rows: Vec::new(),
        packed: Some(PackedRows::pack(ids, &vectors, metadata)),
    });
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        match run_job(client, job.clone(), "import").await {
            Ok(data) => return Ok(parse_data::<Imported>(data, "import")?.rows),
            Err(e) if !first || Instant::now() >= deadline => {
                return Err(e.context(format!(
                    "restoring into {collection:?} stopped; what was written stays (run the restore again into a new name, or delete {collection:?} first)"
                )));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// `arbor cluster backup --out FILE [--include-tokens]`.
pub async fn backup(gw: &GatewayArgs, out: &Path, include_tokens: bool) -> anyhow::Result<()> {
    let mut client = gw.connect().await?;
    let backup: ClusterBackup = parse_data(
        run_job(&mut client, JobSpec::Backup, "backup").await?,
        "backup",
    )?;
    let tokens = if include_tokens {
        let config = arbor_node::ClusterConfig::load(&gw.config)?;
        let path = config.tokens_file();
        Some(
            std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read the tokens file {}", path.display()))?,
        )
    } else {
        None
    };
    let (deployments, collections) = (backup.deployments.len(), backup.collections.len());
    let body = BackupFile {
        backup,
        tokens,
        taken_at: now_secs(),
        arbor: env!("CARGO_PKG_VERSION").into(),
    };
    let mut writer = SealedWriter::create(out, BACKUP_MAGIC)
        .with_context(|| format!("cannot write {}", out.display()))?;
    writer.write(&serde_json::to_vec_pretty(&body)?)?;
    writer.seal()?;
    println!(
        "backup of the control plane: {deployments} deployments, {collections} collections{}, written to {}",
        if body.tokens.is_some() {
            ", the tokens file"
        } else {
            ""
        },
        out.display()
    );
    Ok(())
}

/// The most bytes a backup's JSON may have.
const MAX_BACKUP_BYTES: usize = 64 << 20;

/// `arbor cluster restore FILE [--tokens]`.
pub async fn restore_cluster(gw: &GatewayArgs, path: &Path, tokens: bool) -> anyhow::Result<()> {
    let payload = file::verify(path, BACKUP_MAGIC, "a cluster backup")?;
    let mut r = PayloadReader::open(path, BACKUP_MAGIC, payload)?;
    let body: BackupFile = serde_json::from_slice(&r.rest(MAX_BACKUP_BYTES)?).map_err(|e| {
        anyhow!(
            "{} is not a backup this arbor reads ({e}); nothing was restored",
            path.display()
        )
    })?;
    let tokens_path = match (&body.tokens, tokens) {
        (Some(_), true) => {
            let config = arbor_node::ClusterConfig::load(&gw.config)?;
            let target = config.tokens_file();
            if target.exists() {
                bail!(
                    "{} exists; move it away to restore the backup's tokens, or restore without --tokens; nothing was restored",
                    target.display()
                );
            }
            Some(target)
        }
        (None, true) => bail!(
            "{} holds no tokens (it was made without --include-tokens); nothing was restored",
            path.display()
        ),
        _ => None,
    };
    let mut client = gw.connect().await?;
    let job = JobSpec::Restore(RestoreJob {
        deployments: body.backup.deployments,
        collections: body.backup.collections,
    });
    let restored: Restored = parse_data(run_job(&mut client, job, "restore").await?, "restore")?;
    if let (Some(target), Some(text)) = (tokens_path, body.tokens) {
        write_private(&target, &text)
            .with_context(|| format!("cannot write the tokens file {}", target.display()))?;
        println!("tokens file written to {}", target.display());
    }
    println!(
        "restored {} collections ({}) and {} deployments ({}); collections come back empty: restore their snapshots with `arbor collection restore`",
        restored.collections.len(),
        restored.collections.join(", "),
        restored.deployments.len(),
        restored.deployments.join(", ")
    );
    Ok(())
}

/// Writes `text` to a new file at `path`, readable by its owner only (a tokens file).
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)?.write_all(text.as_bytes())
}
