//! One test environment for black-box tests of the `batchd` binary: a temp dir, a typed
//! [`Config`] written as `batchd.toml`, input records, `batchd run`/`validate` as child
//! processes, `batchd serve` on port 0 (stopped on drop), and readers for the output lines and
//! the manifest. The config is built as TOML text, not from the binary's structs, so the kit
//! does not depend on the `batchd` crate; the test passes the binary in
//! (`env!("CARGO_BIN_EXE_batchd")`).
//!
//! Helpers panic with a message on any failure: they are for tests only.
#![allow(clippy::expect_used)] // test scaffolding: a helper that cannot do its job fails the test, loudly

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::FakeServer;
use crate::fake_bedrock::FakeBedrock;

/// The repository's root (two levels above this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A file of the shared example records beside the repository (`../shared/data`).
pub fn shared_data(name: &str) -> PathBuf {
    repo_root().join("../shared/data").join(name)
}

/// A `batchd.toml` built key by key. Tables appear only when a key is set in them.
#[derive(Debug, Clone, Default)]
pub struct Config {
    table: toml::Table,
    models: Vec<Model>,
}

impl Config {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` in `[section]`.
    pub fn set(mut self, section: &str, key: &str, value: impl Into<toml::Value>) -> Self {
        let entry = self
            .table
            .entry(section)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let toml::Value::Table(table) = entry {
            table.insert(key.to_owned(), value.into());
        }
        self
    }

    /// Sets `key` in `[engine]`.
    pub fn engine(self, key: &str, value: impl Into<toml::Value>) -> Self {
        self.set("engine", key, value)
    }

    /// Retries without the default waits: `[engine] backoff_base_ms`, `backoff_max_ms`.
    pub fn backoff_ms(self, base: i64, max: i64) -> Self {
        self.engine("backoff_base_ms", base)
            .engine("backoff_max_ms", max)
    }

    /// Sets `key` in `[storage]`.
    pub fn storage(self, key: &str, value: impl Into<toml::Value>) -> Self {
        self.set("storage", key, value)
    }

    /// Sets `key` in `[limits]`.
    pub fn limits(self, key: &str, value: impl Into<toml::Value>) -> Self {
        self.set("limits", key, value)
    }

    /// Sets `key` in `[quotas]`.
    pub fn quotas(self, key: &str, value: impl Into<toml::Value>) -> Self {
        self.set("quotas", key, value)
    }

    /// Adds a `[[models]]` entry.
    pub fn model(mut self, model: Model) -> Self {
        self.models.push(model);
        self
    }

    /// The config as TOML text.
    pub fn to_toml(&self) -> String {
        let mut table = self.table.clone();
        if !self.models.is_empty() {
            let models = self
                .models
                .iter()
                .map(|m| toml::Value::Table(m.table.clone()))
                .collect();
            table.insert("models".into(), toml::Value::Array(models));
        }
        toml::to_string(&table).expect("a TOML table always serializes")
    }
}

/// One `[[models]]` entry.
#[derive(Debug, Clone)]
pub struct Model {
    table: toml::Table,
}

impl Model {
    /// `id` on `backend`, with no other key.
    pub fn new(id: &str, backend: &str) -> Self {
        let mut table = toml::Table::new();
        table.insert("id".into(), id.into());
        table.insert("backend".into(), backend.into());
        Self { table }
    }

    /// An OpenAI-compatible backend at `base_url` (no `model` key).
    pub fn openai(id: &str, base_url: &str) -> Self {
        Self::new(id, "openai").set("base_url", base_url)
    }

    /// The fake OpenAI-compatible server, as model `fake`.
    pub fn fake(id: &str, fake: &FakeServer) -> Self {
        Self::openai(id, &fake.base_url()).set("model", "fake")
    }

    /// The fake bedrock-runtime in `region`.
    pub fn bedrock(id: &str, fake: &FakeBedrock, region: &str) -> Self {
        Self::new(id, "bedrock")
            .set("endpoint_url", fake.url())
            .set("region", region)
    }

    /// One of the embedded models (`smollm2-135m-instruct`, `all-minilm-l6-v2`).
    pub fn embedded(id: &str, model: &str) -> Self {
        Self::new(id, "embedded").set("model", model)
    }

    /// Sets any other key of the entry.
    pub fn set(mut self, key: &str, value: impl Into<toml::Value>) -> Self {
        self.table.insert(key.to_owned(), value.into());
        self
    }

    pub fn max_concurrency(self, n: i64) -> Self {
        self.set("max_concurrency", n)
    }
}

/// A temp dir holding `batchd.toml`, the data dir (`data/`) and whatever a test writes; every
/// `batchd` command gets `--config` and `--data-dir` pointing into it.
pub struct TestEnv {
    dir: tempfile::TempDir,
    bin: PathBuf,
    vars: Vec<(OsString, Option<OsString>)>,
}

impl TestEnv {
    /// Writes `config` into a new temp dir; `bin` is the `batchd` binary
    /// (`env!("CARGO_BIN_EXE_batchd")`).
    pub fn new(bin: impl Into<PathBuf>, config: &Config) -> Self {
        // Tests talk to `serve` with reqwest, which needs a rustls provider.
        crate::install_crypto_provider();
        let dir = tempfile::tempdir().expect("a temp dir");
        std::fs::write(dir.path().join("batchd.toml"), config.to_toml()).expect("batchd.toml");
        Self {
            dir,
            bin: bin.into(),
            vars: Vec::new(),
        }
    }

    /// Sets an environment variable for every command this env starts.
    pub fn env(mut self, key: &str, value: impl Into<OsString>) -> Self {
        self.vars.push((key.into(), Some(value.into())));
        self
    }

    /// Removes an environment variable from every command this env starts.
    pub fn env_remove(mut self, key: &str) -> Self {
        self.vars.push((key.into(), None));
        self
    }

    /// The temp dir.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// `rel` inside the temp dir.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn config_path(&self) -> PathBuf {
        self.path("batchd.toml")
    }

    /// The local bucket `name` (`s3://name/...` without an S3 endpoint).
    pub fn bucket(&self, name: &str) -> PathBuf {
        self.path("data/buckets").join(name)
    }

    /// `batchd ARGS --config .. --data-dir ..` with this env's variables, as a std command.
    pub fn std_command(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.bin);
        cmd.args(args)
            .arg("--config")
            .arg(self.config_path())
            .arg("--data-dir")
            .arg(self.path("data"))
            .stdin(Stdio::null());
        for (key, value) in &self.vars {
            match value {
                Some(value) => cmd.env(key, value),
                None => cmd.env_remove(key),
            };
        }
        cmd
    }

    /// The same as a tokio command, killed when dropped.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::from(self.std_command(args));
        cmd.kill_on_drop(true);
        cmd
    }

    /// Runs `batchd ARGS` to the end and returns its output.
    pub async fn batchd(&self, args: &[&str]) -> Output {
        self.command(args).output().await.expect("batchd starts")
    }

    /// `batchd run INPUTS --model-id MODEL --out <dir>/OUT EXTRA`; returns the output and the
    /// job's folder under `OUT` (None when the run wrote none).
    pub async fn run(
        &self,
        inputs: &[&Path],
        model: &str,
        out: &str,
        extra: &[&str],
    ) -> (Output, Option<PathBuf>) {
        let out_dir = self.path(out);
        let mut args: Vec<String> = vec!["run".into()];
        args.extend(inputs.iter().map(|p| p.display().to_string()));
        args.extend(["--model-id".into(), model.into(), "--out".into()]);
        args.push(out_dir.display().to_string());
        args.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = self.batchd(&refs).await;
        (output, first_entry(&out_dir))
    }

    /// Starts `batchd serve` on a port the OS picks and reads the address back; its stderr
    /// goes (appended) to `serve.log` in the temp dir.
    pub async fn serve(&self) -> Served {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("serve.log"))
            .expect("serve.log");
        let mut child = self
            .command(&["serve", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("batchd serve starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("batchd serve prints its address within 30 s")
            .expect("reading serve's stdout")
            .unwrap_or_else(|| panic!("serve exited early:\n{}", self.serve_log()));
        let url = first
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
            .to_owned();
        Served {
            child,
            url,
            http: reqwest::Client::new(),
        }
    }

    /// What every `serve` of this env wrote to stderr.
    pub fn serve_log(&self) -> String {
        std::fs::read_to_string(self.path("serve.log")).unwrap_or_default()
    }
}

/// A running `batchd serve`, killed (SIGKILL) when dropped.
pub struct Served {
    pub child: Child,
    url: String,
    http: reqwest::Client,
}

impl Served {
    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `GET url/PATH` as JSON.
    pub async fn get_json(&self, path: &str) -> Value {
        let response = self
            .http
            .get(format!("{}/{path}", self.url))
            .send()
            .await
            .expect("GET");
        response.json().await.expect("a JSON answer")
    }

    /// `POST url/PATH` with a JSON body; the answer as JSON.
    pub async fn post_json(&self, path: &str, body: &Value) -> Value {
        let response = self
            .http
            .post(format!("{}/{path}", self.url))
            .json(body)
            .send()
            .await
            .expect("POST");
        response.json().await.expect("a JSON answer")
    }

    /// `POST url/PATH` with a JSON body (`None`: no body); the status and the answer as JSON.
    pub async fn post_status(&self, path: &str, body: Option<&Value>) -> (u16, Value) {
        let mut request = self.http.post(format!("{}/{path}", self.url));
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.expect("POST");
        let status = response.status().as_u16();
        (status, response.json().await.expect("a JSON answer"))
    }

    /// Sends a signal (`-TERM`, `-KILL`) with `kill(1)`.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("serve is running").to_string();
        let status = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} {pid}: {status:?}");
    }

    /// Waits at most `limit` for the process to exit.
    pub async fn wait(&mut self, limit: Duration) -> ExitStatus {
        tokio::time::timeout(limit, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("serve still running after {limit:?}"))
            .expect("waiting for serve")
    }

    /// SIGKILL, then reaps the process.
    pub async fn kill9(mut self) {
        self.signal("-KILL");
        let _ = self.child.wait().await;
    }
}

/// The job folder in `dir` (a run's `--out`), if any: the folder named like a job id, not the
/// `<jobId>.analysis.json` or the `<jobId>.timings/` folder beside it.
pub fn first_entry(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .map(|e| e.expect("reading an output folder").path())
        .find(|p| {
            p.is_dir()
                && p.file_name()
                    .is_some_and(|n| !n.to_string_lossy().contains('.'))
        })
}

/// Exit status, stdout and stderr, for assertion messages.
pub fn describe(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Every line of a JSON Lines file (an input or a `.jsonl.out`), parsed.
pub fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

/// A job folder's `manifest.json.out`.
pub fn manifest(job_dir: &Path) -> Value {
    let path = job_dir.join("manifest.json.out");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Asserts a finished job's manifest counts: `total` records read and processed, `errors` of
/// them error lines, the rest successes.
pub fn assert_counts(manifest: &Value, total: usize, errors: usize) {
    let count = |key: &str| manifest[key].as_u64();
    let want = |n: usize| u64::try_from(n).ok();
    assert_eq!(
        [
            count("totalRecordCount"),
            count("processedRecordCount"),
            count("successRecordCount"),
            count("errorRecordCount"),
        ],
        [want(total), want(total), want(total - errors), want(errors)],
        "total, processed, success, error counts of {manifest}"
    );
}

/// A Converse record: one user message with `text`.
pub fn converse_record(id: &str, text: &str) -> Value {
    json!({
        "recordId": id,
        "modelInput": {"messages": [{"role": "user", "content": [{"text": text}]}]},
    })
}

/// Writes `records` as JSON Lines to `path`, creating its folders.
pub fn write_jsonl(path: &Path, records: impl IntoIterator<Item = Value>) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("{}: {e}", parent.display()));
    }
    let text: String = records.into_iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// The `recordId` of every line.
pub fn record_ids(lines: &[Value]) -> Vec<&str> {
    lines
        .iter()
        .map(|l| {
            l["recordId"]
                .as_str()
                .unwrap_or_else(|| panic!("no recordId: {l}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_text_has_the_sections_and_models_that_were_set() {
        let config = Config::new()
            .backoff_ms(1, 20)
            .storage("s3_endpoint", "http://127.0.0.1:9")
            .model(Model::openai("m", "http://127.0.0.1:1/v1").max_concurrency(8))
            .model(Model::embedded("e", "all-minilm-l6-v2"));
        let parsed: toml::Table = config.to_toml().parse().unwrap();
        assert_eq!(parsed["engine"]["backoff_base_ms"].as_integer(), Some(1));
        assert_eq!(parsed["engine"]["backoff_max_ms"].as_integer(), Some(20));
        assert_eq!(
            parsed["storage"]["s3_endpoint"].as_str(),
            Some("http://127.0.0.1:9")
        );
        assert!(!parsed.contains_key("limits"));
        let models = parsed["models"].as_array().unwrap();
        assert_eq!(models.len(), 2);
        assert_eq!(models[0]["backend"].as_str(), Some("openai"));
        assert_eq!(models[0]["max_concurrency"].as_integer(), Some(8));
        assert_eq!(models[1]["id"].as_str(), Some("e"));
        assert_eq!(models[1]["model"].as_str(), Some("all-minilm-l6-v2"));
    }

    #[test]
    fn assert_counts_passes_on_the_counts_and_fails_on_others() {
        let manifest = json!({"totalRecordCount": 3, "processedRecordCount": 3,
            "successRecordCount": 2, "errorRecordCount": 1});
        assert_counts(&manifest, 3, 1);
        for (total, errors) in [(3, 0), (4, 1), (2, 1)] {
            let wrong = std::panic::catch_unwind(|| assert_counts(&manifest, total, errors));
            assert!(wrong.is_err(), "{total} {errors} passed");
        }
    }

    #[test]
    fn records_written_read_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/in.jsonl");
        write_jsonl(
            &path,
            (0..3).map(|i| converse_record(&format!("r{i}"), "hi")),
        );
        let lines = read_jsonl(&path);
        assert_eq!(record_ids(&lines), ["r0", "r1", "r2"]);
        assert_eq!(
            lines[0]["modelInput"]["messages"][0]["content"][0]["text"],
            "hi"
        );
    }
}
