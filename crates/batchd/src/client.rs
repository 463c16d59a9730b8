//! `batchd jobs create|get|list|stop|wait`: a small client of a running `batchd serve`,
//! speaking the same Bedrock control-plane API as boto3, with a bearer key (`--api-key`,
//! `BATCHD_API_KEY`) when the server has keys.
//!
//! Errors the server answers are printed as `<__type>: <message>` and exit with 1; transport
//! failures (no server, bad endpoint) are returned as errors for `main` to report.

use std::fmt;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use batchd_core::JobStatus;
use clap::{Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::{Client, Method, Url};
use serde_json::{Value, json};

/// The role sent when none is given: Bedrock requires one, batchd does not use it.
pub const DEFAULT_ROLE_ARN: &str = "arn:aws:iam::000000000000:role/batchd";

/// Polls are at least this far apart, whatever `--interval-ms` says.
const MIN_POLL_INTERVAL_MS: u64 = 50;

/// Consecutive transport failures `wait` rides out (a server restart keeps its jobs).
const WAIT_MAX_TRANSPORT_FAILURES: u32 = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InvocationTypeArg {
    #[value(name = "Converse")]
    Converse,
    #[value(name = "InvokeModel", alias = "invoke-model")]
    InvokeModel,
}

impl InvocationTypeArg {
    fn as_str(self) -> &'static str {
        match self {
            Self::Converse => "Converse",
            Self::InvokeModel => "InvokeModel",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum JobsCommand {
    /// Submit a job (CreateModelInvocationJob); prints its ARN.
    Create {
        #[arg(long)]
        job_name: String,
        /// A model id the server is configured with.
        #[arg(long)]
        model_id: String,
        /// s3:// URI of the input .jsonl file or folder.
        #[arg(long)]
        input: String,
        /// s3:// URI of the output folder; the job writes to <output>/<jobId>/.
        #[arg(long)]
        output: String,
        #[arg(long, default_value = DEFAULT_ROLE_ARN)]
        role_arn: String,
        /// Format of the records' modelInput.
        #[arg(long, value_enum, ignore_case = true, default_value = "Converse")]
        invocation_type: InvocationTypeArg,
        /// timeoutDurationInHours (24-168); the server's default when absent.
        #[arg(long)]
        timeout_hours: Option<u32>,
        /// Idempotency token: a repeat with the same token returns the same job.
        #[arg(long)]
        client_request_token: Option<String>,
    },
    /// Print a job (GetModelInvocationJob) as JSON.
    Get {
        /// Job id (12 characters) or job ARN.
        id: String,
    },
    /// List jobs as a table, newest first, following every page.
    List {
        /// Only jobs in this status (e.g. InProgress).
        #[arg(long, value_parser = parse_status)]
        status: Option<JobStatus>,
        /// Only jobs whose name contains this text.
        #[arg(long)]
        name_contains: Option<String>,
        /// Page size asked of the server (1-1000); all pages are fetched.
        #[arg(long)]
        max_results: Option<u32>,
    },
    /// Stop a job that has not ended (StopModelInvocationJob).
    Stop {
        /// Job id or job ARN.
        id: String,
    },
    /// Show a job's progress until it ends; exits 0 for Completed, 1 otherwise.
    Wait {
        /// Job id or job ARN.
        id: String,
        /// Time between polls.
        #[arg(long, default_value_t = 500)]
        interval_ms: u64,
    },
}

fn parse_status(s: &str) -> Result<JobStatus, String> {
    s.parse::<JobStatus>().map_err(|_| {
        let names: Vec<&str> = JobStatus::ALL.iter().map(|st| st.as_str()).collect();
        format!("expected one of {}", names.join(", "))
    })
}

/// An error answer of the server (`{"__type", "message"}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    pub error_type: String,
    pub message: String,
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.error_type, self.message)
    }
}

impl std::error::Error for ServerError {}

impl ServerError {
    /// Reads the error from a rest-json answer: the body's `__type`/`message`, else the
    /// `x-amzn-ErrorType` header, else the HTTP status.
    fn from_answer(
        status: reqwest::StatusCode,
        error_type_header: Option<&str>,
        body: &str,
    ) -> Self {
        let parsed: Option<Value> = serde_json::from_str(body).ok();
        let field = |names: &[&str]| {
            let v = parsed.as_ref()?;
            names
                .iter()
                .find_map(|n| v.get(*n).and_then(Value::as_str))
                .map(str::to_owned)
        };
        let header_type = error_type_header
            .map(|h| h.split(':').next().unwrap_or(h).to_owned())
            .filter(|h| !h.is_empty());
        let error_type = field(&["__type", "code", "Code"])
            // `__type` may be namespaced: `com.amazon...#ValidationException`.
            .map(|t| t.rsplit('#').next().unwrap_or(&t).to_owned())
            .or(header_type)
            .unwrap_or_else(|| format!("HTTP {}", status.as_u16()));
        let message = field(&["message", "Message"]).unwrap_or_else(|| {
            let text = body.trim();
            if text.is_empty() {
                status.canonical_reason().unwrap_or("no message").to_owned()
            } else {
                text.to_owned()
            }
        });
        Self {
            error_type,
            message,
        }
    }
}

/// Runs one `batchd jobs` subcommand against the server at `endpoint`.
pub async fn run(
    endpoint: &str,
    api_key: Option<String>,
    command: JobsCommand,
) -> anyhow::Result<ExitCode> {
    let mut api = Api::new(endpoint)?;
    api.api_key = api_key;
    let result = match command {
        JobsCommand::Create {
            job_name,
            model_id,
            input,
            output,
            role_arn,
            invocation_type,
            timeout_hours,
            client_request_token,
        } => {
            let mut body = json!({
                "jobName": job_name,
                "modelId": model_id,
                "roleArn": role_arn,
                "inputDataConfig": {"s3InputDataConfig": {"s3Uri": input}},
                "outputDataConfig": {"s3OutputDataConfig": {"s3Uri": output}},
                "modelInvocationType": invocation_type.as_str(),
            });
            if let Some(hours) = timeout_hours {
                body["timeoutDurationInHours"] = json!(hours);
            }
            if let Some(token) = client_request_token {
                body["clientRequestToken"] = json!(token);
            }
            create(&api, &body).await
        }
        JobsCommand::Get { id } => get(&api, &id).await,
        JobsCommand::List {
            status,
            name_contains,
            max_results,
        } => list(&api, status, name_contains.as_deref(), max_results).await,
        JobsCommand::Stop { id } => stop(&api, &id).await,
        JobsCommand::Wait { id, interval_ms } => wait(&api, &id, interval_ms).await,
    };
    match result {
        Err(e) => match e.downcast_ref::<ServerError>() {
            Some(server) => {
                eprintln!("{server}");
                Ok(ExitCode::from(1))
            }
            None => Err(e),
        },
        ok => ok,
    }
}

async fn create(api: &Api, body: &Value) -> anyhow::Result<ExitCode> {
    let answer = api
        .call(
            Method::POST,
            api.url(&["model-invocation-job"])?,
            Some(body),
        )
        .await?;
    let arn = answer["jobArn"]
        .as_str()
        .ok_or_else(|| anyhow!("the server's answer has no jobArn: {answer}"))?;
    println!("{arn}");
    Ok(ExitCode::SUCCESS)
}

async fn get(api: &Api, id: &str) -> anyhow::Result<ExitCode> {
    let job = api.get_job(id).await?;
    println!("{}", serde_json::to_string_pretty(&job)?);
    Ok(ExitCode::SUCCESS)
}

async fn list(
    api: &Api,
    status: Option<JobStatus>,
    name_contains: Option<&str>,
    max_results: Option<u32>,
) -> anyhow::Result<ExitCode> {
    let mut jobs = Vec::new();
    let mut next_token: Option<String> = None;
    loop {
        let mut url = api.url(&["model-invocation-jobs"])?;
        let pairs = [
            ("statusEquals", status.map(|s| s.as_str().to_owned())),
            ("nameContains", name_contains.map(str::to_owned)),
            ("maxResults", max_results.map(|m| m.to_string())),
            ("nextToken", next_token.clone()),
        ];
        let pairs: Vec<(&str, String)> = pairs
            .into_iter()
            .filter_map(|(k, v)| Some((k, v?)))
            .collect();
        if !pairs.is_empty() {
            url.query_pairs_mut().extend_pairs(pairs);
        }
        let page = api.call(Method::GET, url, None).await?;
        if let Some(items) = page["invocationJobSummaries"].as_array() {
            jobs.extend(items.iter().cloned());
        }
        match page["nextToken"].as_str() {
            // A token equal to the last one would loop forever.
            Some(t) if next_token.as_deref() != Some(t) => next_token = Some(t.to_owned()),
            _ => break,
        }
    }
    print!("{}", format_table(&jobs));
    Ok(ExitCode::SUCCESS)
}

async fn stop(api: &Api, id: &str) -> anyhow::Result<ExitCode> {
    api.call(
        Method::POST,
        api.url(&["model-invocation-job", id, "stop"])?,
        None,
    )
    .await?;
    println!("stop requested: {id}");
    Ok(ExitCode::SUCCESS)
}

async fn wait(api: &Api, id: &str, interval_ms: u64) -> anyhow::Result<ExitCode> {
    let interval = Duration::from_millis(interval_ms.max(MIN_POLL_INTERVAL_MS));
    // indicatif draws on stderr only when it is a terminal.
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {msg:<28} [{bar:40}] {pos}/{len} records ({elapsed})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let mut failures = 0;
    let job = loop {
        let job = match api.get_job(id).await {
            Ok(job) => job,
            Err(e) if is_transport(&e) && failures < WAIT_MAX_TRANSPORT_FAILURES => {
                failures += 1;
                bar.set_message(format!("server unreachable ({failures})"));
                tokio::time::sleep(interval).await;
                continue;
            }
            Err(e) => {
                bar.abandon();
                return Err(e);
            }
        };
        failures = 0;
        let status_text = job["status"].as_str().unwrap_or("");
        let status = status_text
            .parse::<JobStatus>()
            .map_err(|_| anyhow!("the server answered an unknown job status {status_text:?}"))?;
        let count = |k: &str| job[k].as_u64().unwrap_or(0);
        bar.set_length(count("totalRecordCount"));
        bar.set_position(count("processedRecordCount"));
        bar.set_message(format!("{status}, {} errors", count("errorRecordCount")));
        if status.is_terminal() {
            bar.finish_and_clear();
            break job;
        }
        tokio::time::sleep(interval).await;
    };
    let status = job["status"].as_str().unwrap_or("");
    println!("{status}");
    if let Some(message) = job["message"].as_str().filter(|m| !m.is_empty()) {
        eprintln!("{message}");
    }
    Ok(if status == JobStatus::Completed.as_str() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn is_transport(e: &anyhow::Error) -> bool {
    e.downcast_ref::<reqwest::Error>()
        .is_some_and(|r| r.is_connect() || r.is_timeout() || r.is_request())
}

/// The jobs as a table: id, name, status, processed/total, submit time.
pub fn format_table(jobs: &[Value]) -> String {
    let header = ["ID", "NAME", "STATUS", "PROCESSED/TOTAL", "SUBMITTED"].map(str::to_owned);
    let rows: Vec<[String; 5]> = jobs
        .iter()
        .map(|job| {
            let text = |k: &str| job[k].as_str().unwrap_or("-").to_owned();
            let count = |k: &str| job[k].as_u64().map_or("-".to_owned(), |n| n.to_string());
            let arn = text("jobArn");
            [
                arn.rsplit('/').next().unwrap_or(&arn).to_owned(),
                text("jobName"),
                text("status"),
                format!(
                    "{}/{}",
                    count("processedRecordCount"),
                    count("totalRecordCount")
                ),
                text("submitTime"),
            ]
        })
        .collect();
    let mut widths = header.clone().map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// The server's base URL and one HTTP client.
struct Api {
    http: Client,
    base: Url,
    /// Sent as `Authorization: Bearer <key>`.
    api_key: Option<String>,
}

impl Api {
    fn new(endpoint: &str) -> anyhow::Result<Self> {
        let base = Url::parse(endpoint).with_context(|| format!("bad endpoint {endpoint:?}"))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            bail!("bad endpoint {endpoint:?}: expected http://host:port or https://...");
        }
        let http = Client::builder()
            .user_agent(concat!("batchd-jobs/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Self {
            http,
            base,
            api_key: None,
        })
    }

    /// The endpoint with these path segments appended, each percent-encoded (an ARN's `/`
    /// becomes `%2F`, as the SDKs send it).
    fn url(&self, segments: &[&str]) -> anyhow::Result<Url> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| anyhow!("endpoint {} cannot take a path", self.base))?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    async fn get_job(&self, id: &str) -> anyhow::Result<Value> {
        self.call(Method::GET, self.url(&["model-invocation-job", id])?, None)
            .await
    }

    /// One request; a non-2xx answer becomes a [`ServerError`].
    async fn call(&self, method: Method, url: Url, body: Option<&Value>) -> anyhow::Result<Value> {
        let mut request = self.http.request(method, url.clone());
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await?;
        let status = response.status();
        let error_type = response
            .headers()
            .get("x-amzn-ErrorType")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = response
            .text()
            .await
            .with_context(|| format!("reading the answer of {url}"))?;
        if !status.is_success() {
            return Err(ServerError::from_answer(status, error_type.as_deref(), &text).into());
        }
        if text.trim().is_empty() {
            return Ok(json!({}));
        }
        serde_json::from_str(&text).with_context(|| format!("the answer of {url} is not JSON"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        command: JobsCommand,
    }

    fn parse(args: &[&str]) -> Result<JobsCommand, clap::Error> {
        Cli::try_parse_from(std::iter::once("jobs").chain(args.iter().copied())).map(|c| c.command)
    }

    /// `create` with every required flag (job `j`, model `m`, input `i`, output `o`), then
    /// `extra`.
    fn parse_create(extra: &[&str]) -> Result<JobsCommand, clap::Error> {
        let mut args = vec![
            "create",
            "--job-name",
            "j",
            "--model-id",
            "m",
            "--input",
            "i",
            "--output",
            "o",
        ];
        args.extend_from_slice(extra);
        parse(&args)
    }

    #[test]
    fn create_has_bedrock_defaults() {
        let cmd = parse(&[
            "create",
            "--job-name",
            "j1",
            "--model-id",
            "m",
            "--input",
            "s3://b/in/",
            "--output",
            "s3://b/out/",
        ])
        .unwrap();
        assert_eq!(
            cmd,
            JobsCommand::Create {
                job_name: "j1".into(),
                model_id: "m".into(),
                input: "s3://b/in/".into(),
                output: "s3://b/out/".into(),
                role_arn: DEFAULT_ROLE_ARN.into(),
                invocation_type: InvocationTypeArg::Converse,
                timeout_hours: None,
                client_request_token: None,
            }
        );
        for (given, want) in [
            ("InvokeModel", InvocationTypeArg::InvokeModel),
            ("invokemodel", InvocationTypeArg::InvokeModel),
            ("invoke-model", InvocationTypeArg::InvokeModel),
            ("converse", InvocationTypeArg::Converse),
        ] {
            let cmd = parse_create(&[
                "--invocation-type",
                given,
                "--timeout-hours",
                "48",
                "--client-request-token",
                "t1",
                "--role-arn",
                "arn:aws:iam::123456789012:role/r",
            ])
            .unwrap();
            let JobsCommand::Create {
                invocation_type,
                timeout_hours,
                client_request_token,
                role_arn,
                ..
            } = cmd
            else {
                panic!("not create: {cmd:?}");
            };
            assert_eq!(invocation_type, want, "{given}");
            assert_eq!(timeout_hours, Some(48));
            assert_eq!(client_request_token.as_deref(), Some("t1"));
            assert_eq!(role_arn, "arn:aws:iam::123456789012:role/r");
        }
        assert!(parse(&["create", "--job-name", "j"]).is_err());
        assert!(parse_create(&["--invocation-type", "Chat"]).is_err());
    }

    #[test]
    fn get_list_stop_and_wait_parse() {
        assert_eq!(
            parse(&["get", "abc123def456"]).unwrap(),
            JobsCommand::Get {
                id: "abc123def456".into()
            }
        );
        assert_eq!(
            parse(&["list"]).unwrap(),
            JobsCommand::List {
                status: None,
                name_contains: None,
                max_results: None
            }
        );
        assert_eq!(
            parse(&[
                "list",
                "--status",
                "InProgress",
                "--name-contains",
                "x",
                "--max-results",
                "5"
            ])
            .unwrap(),
            JobsCommand::List {
                status: Some(JobStatus::InProgress),
                name_contains: Some("x".into()),
                max_results: Some(5)
            }
        );
        assert!(parse(&["list", "--status", "Running"]).is_err());
        assert_eq!(
            parse(&["stop", "abc123def456"]).unwrap(),
            JobsCommand::Stop {
                id: "abc123def456".into()
            }
        );
        assert_eq!(
            parse(&["wait", "abc123def456"]).unwrap(),
            JobsCommand::Wait {
                id: "abc123def456".into(),
                interval_ms: 500
            }
        );
        assert_eq!(
            parse(&["wait", "x", "--interval-ms", "20"]).unwrap(),
            JobsCommand::Wait {
                id: "x".into(),
                interval_ms: 20
            }
        );
        assert!(parse(&["get"]).is_err());
    }

    #[test]
    fn table_aligns_columns_and_fills_gaps() {
        let jobs = [
            json!({
                "jobArn": "arn:aws:bedrock:us-east-1:000000000000:model-invocation-job/abc123def456",
                "jobName": "a-long-job-name",
                "status": "InProgress",
                "processedRecordCount": 3,
                "totalRecordCount": 10,
                "submitTime": "2025-01-15T10:00:00.123Z",
            }),
            json!({"jobArn": "x/zzzzzzzzzzzz", "jobName": "b", "status": "Submitted"}),
        ];
        let table = format_table(&jobs);
        assert_eq!(
            table,
            "\
ID            NAME             STATUS      PROCESSED/TOTAL  SUBMITTED
abc123def456  a-long-job-name  InProgress  3/10             2025-01-15T10:00:00.123Z
zzzzzzzzzzzz  b                Submitted   -/-              -
"
        );
        assert_eq!(
            format_table(&[]),
            "ID  NAME  STATUS  PROCESSED/TOTAL  SUBMITTED\n"
        );
    }

    #[test]
    fn server_errors_read_body_then_header_then_status() {
        let bad = reqwest::StatusCode::BAD_REQUEST;
        let e = ServerError::from_answer(
            bad,
            Some("ValidationException"),
            r#"{"__type":"ValidationException","message":"Value null at 'jobName'"}"#,
        );
        assert_eq!(
            e.to_string(),
            "ValidationException: Value null at 'jobName'"
        );
        let e = ServerError::from_answer(
            bad,
            None,
            r#"{"__type":"com.amazon.coral#ConflictException","Message":"m"}"#,
        );
        assert_eq!(e.to_string(), "ConflictException: m");
        let e = ServerError::from_answer(bad, Some("ThrottlingException:http://x"), "slow down");
        assert_eq!(e.to_string(), "ThrottlingException: slow down");
        let e = ServerError::from_answer(reqwest::StatusCode::BAD_GATEWAY, None, "");
        assert_eq!(e.to_string(), "HTTP 502: Bad Gateway");
    }

    #[test]
    fn urls_percent_encode_identifiers_under_the_endpoint() {
        // reqwest is built without a rustls provider; main installs ring, so does this test.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let api = Api::new("http://127.0.0.1:8080").unwrap();
        let arn = "arn:aws:bedrock:us-east-1:000000000000:model-invocation-job/abc123def456";
        let url = api.url(&["model-invocation-job", arn, "stop"]).unwrap();
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:8080/model-invocation-job/arn:aws:bedrock:us-east-1:000000000000:model-invocation-job%2Fabc123def456/stop"
        );
        let prefixed = Api::new("https://example.com/bedrock/").unwrap();
        assert_eq!(
            prefixed.url(&["model-invocation-jobs"]).unwrap().as_str(),
            "https://example.com/bedrock/model-invocation-jobs"
        );
        assert!(Api::new("not a url").is_err());
        assert!(Api::new("ftp://host").is_err());
    }
}
