//! The web console at `/ui`: every API's jobs of the caller's account, server-rendered with
//! `maud`, refreshed by `<meta http-equiv="refresh">` while something runs (no script, no
//! CDN: it works offline and by keyboard, with the browser's own focus order).
//!
//! - `GET /ui`: the job list (filters: status, API, name), with progress bars.
//! - `GET /ui/jobs/{jobId}`: counters, records/s, ETA, throughput over time (inline SVG, from
//!   the samples this page's refreshes took), the analysis of an ended job, the failed
//!   records paged (`?failed=OFFSET`), and a stop button.
//! - `POST /ui/jobs/{jobId}/stop`: stops the job, then back to its page.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Extension, FromRequestParts, Path, Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use batchd_core::{DialectKind, Job, JobFilter, JobId, JobOrigin, JobStatus};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde::Deserialize;

use crate::auth::Caller;
use crate::bedrock::timestamp::format_ms;
use crate::{FailedPage, JobService, ServiceError};

/// Failed records per page.
const FAILED_PAGE: usize = 20;
/// Jobs on the list page.
const LIST_LIMIT: u32 = 100;
/// Throughput samples kept per job (one per page view, about one a second while watched).
const SAMPLES: usize = 300;

/// `(time ms, processed)` samples of each job, oldest first.
type Samples = HashMap<JobId, VecDeque<(i64, u64)>>;

#[derive(Clone)]
struct Console {
    service: Arc<dyn JobService>,
    /// `(time ms, processed)` per job, taken when its page is rendered.
    samples: Arc<Mutex<Samples>>,
}

/// The console's routes (the caller puts them behind `auth`).
pub fn routes(service: Arc<dyn JobService>) -> Router {
    let state = Console {
        service,
        samples: Arc::default(),
    };
    Router::new()
        .route("/ui", get(list))
        .route("/ui/jobs/{jobId}", get(job_page))
        .route("/ui/jobs/{jobId}/stop", post(stop))
        .with_state(state)
}

#[derive(Debug, Default, Deserialize)]
struct ListQuery {
    status: Option<String>,
    api: Option<String>,
    name: Option<String>,
}

fn dialect_of(name: &str) -> Option<DialectKind> {
    [
        DialectKind::Bedrock,
        DialectKind::BatchJob,
        DialectKind::OpenAi,
    ]
    .into_iter()
    .find(|d| d.as_str() == name)
}

fn page(title: &str, refresh: Option<u32>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some(seconds) = refresh {
                    meta http-equiv="refresh" content=(seconds);
                }
                title { (title) " · batchd" }
                style { (PreEscaped(CSS)) }
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header { a href="/ui" { "batchd" } span.sub { "jobs" } }
                main #main { (body) }
            }
        }
    }
}

const CSS: &str = "
*{box-sizing:border-box}body{margin:0;font:15px/1.45 system-ui,sans-serif;color:#1d2330;background:#f5f6f8}
header{background:#1d2330;color:#fff;padding:.6rem 1.5rem;display:flex;gap:.6rem;align-items:baseline}
header a{color:#fff;font-weight:700;text-decoration:none}.sub{opacity:.7}
main{max-width:72rem;margin:1.2rem auto;padding:0 1.5rem}
h1{font-size:1.35rem;margin:.2rem 0 1rem}h2{font-size:1.05rem;margin:1.6rem 0 .5rem}
table{width:100%;border-collapse:collapse;background:#fff;border:1px solid #dde1e7}
th,td{text-align:left;padding:.45rem .6rem;border-bottom:1px solid #eceff3;vertical-align:top}
th{font-size:.8rem;text-transform:uppercase;letter-spacing:.03em;color:#5b6475;background:#fafbfc}
a{color:#1f5fbf}a:focus,button:focus,input:focus,select:focus{outline:3px solid #f2a900;outline-offset:1px}
.skip{position:absolute;left:-9999px}.skip:focus{left:1rem;top:.5rem;background:#fff;padding:.3rem}
.bar{width:11rem;height:.7rem;background:#e3e7ee;border-radius:.35rem;overflow:hidden;display:inline-block;vertical-align:middle}
.bar>span{display:block;height:100%;background:#2f7de1}.bar.wide{width:100%;height:1rem}
.status{font-size:.8rem;padding:.1rem .45rem;border-radius:.6rem;background:#e3e7ee;white-space:nowrap}
.Completed{background:#d7f2de;color:#14602b}.Failed,.Expired{background:#fbdada;color:#8a1c1c}
.InProgress,.Scheduled,.Validating,.Submitted{background:#dbe8fb;color:#17448a}
.Stopping,.Stopped,.PartiallyCompleted{background:#fdecc8;color:#7a4b00}
form.filters{display:flex;gap:.8rem;flex-wrap:wrap;align-items:end;margin-bottom:1rem}
label{display:flex;flex-direction:column;font-size:.8rem;color:#5b6475;gap:.15rem}
input,select,button{font:inherit;padding:.3rem .5rem;border:1px solid #b9c0cc;border-radius:.3rem;background:#fff}
button{cursor:pointer}button.stop{background:#b42318;color:#fff;border-color:#b42318}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(9rem,1fr));gap:.6rem;margin:.8rem 0}
.card{background:#fff;border:1px solid #dde1e7;border-radius:.4rem;padding:.5rem .7rem}
.card b{display:block;font-size:1.25rem}.card small{color:#5b6475}
pre{background:#fff;border:1px solid #dde1e7;padding:.6rem;overflow:auto;max-height:24rem;font-size:.8rem}
.meta{color:#5b6475;font-size:.85rem}.muted{color:#5b6475}
td.msg{max-width:26rem;word-break:break-word}code{font-size:.8rem;word-break:break-all}
svg{background:#fff;border:1px solid #dde1e7;width:100%;height:auto}
.pager{display:flex;gap:1rem;margin:.5rem 0}
";

fn progress(processed: u64, total: u64, wide: bool) -> Markup {
    let percent = if total == 0 {
        0.0
    } else {
        (processed as f64 * 100.0 / total as f64).min(100.0)
    };
    html! {
        span.bar.wide[wide] role="progressbar" aria-valuemin="0" aria-valuemax="100"
            aria-valuenow=(format!("{percent:.0}")) aria-label="progress" {
            span style=(format!("width:{percent:.1}%")) {}
        }
        " " span.muted { (processed) " / " (total) }
    }
}

fn status_badge(status: JobStatus) -> Markup {
    html! { span class=(format!("status {}", status.as_str())) data-status=(status.as_str()) { (status.as_str()) } }
}

fn error_page(status: StatusCode, message: &str) -> Response {
    (
        status,
        page(
            "Error",
            None,
            html! { h1 { "Error" } p { (message) } p { a href="/ui" { "All jobs" } } },
        ),
    )
        .into_response()
}

fn service_error(e: ServiceError) -> Response {
    let status = match e {
        ServiceError::NotFound(_) => StatusCode::NOT_FOUND,
        ServiceError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    };
    if let ServiceError::Internal(detail) = &e {
        tracing::error!(error = %detail, "console request failed");
        return error_page(status, "Something went wrong on the server.");
    }
    error_page(status, &e.to_string())
}

async fn list(
    State(console): State<Console>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<ListQuery>,
) -> Response {
    let mut filter = JobFilter::new(JobOrigin::Api, LIST_LIMIT);
    filter.account_id = Some(caller.account_id.clone());
    let status = q.status.as_deref().filter(|s| !s.is_empty());
    filter.status = status.and_then(|s| s.parse().ok());
    filter.dialect = q.api.as_deref().and_then(dialect_of);
    filter.name_contains = q.name.clone().filter(|n| !n.is_empty());
    let jobs = match console.service.list_jobs(filter).await {
        Ok(jobs) => jobs,
        Err(e) => return service_error(e),
    };
    let running = jobs.iter().any(|j| !j.status.is_terminal());
    let statuses = JobStatus::ALL.into_iter().chain([JobStatus::Created]);
    let body = html! {
        h1 { "Jobs" }
        form.filters method="get" action="/ui" {
            label { "Status" select name="status" {
                option value="" { "any" }
                @for s in statuses {
                    option value=(s.as_str()) selected[status == Some(s.as_str())] { (s.as_str()) }
                }
            } }
            label { "API" select name="api" {
                option value="" { "any" }
                @for (value, name) in [("bedrock", "Bedrock"), ("batch-job", "Batch-job API"), ("openai", "OpenAI")] {
                    option value=(value) selected[q.api.as_deref() == Some(value)] { (name) }
                }
            } }
            label { "Name contains" input type="search" name="name" value=(q.name.as_deref().unwrap_or("")); }
            button type="submit" { "Filter" }
        }
        @if jobs.is_empty() {
            p.muted { "No jobs." }
        } @else {
            table {
                thead { tr { th { "Name" } th { "API" } th { "Model" } th { "Status" } th { "Progress" } th { "Errors" } th { "Submitted" } } }
                tbody {
                    @for job in &jobs {
                        tr data-job-id=(job.id.as_str()) {
                            td { a href=(format!("/ui/jobs/{}", job.id)) { (job.request.name) } }
                            td { (job.request.dialect.kind().as_str()) }
                            td { code { (job.request.model_id) } }
                            td { (status_badge(job.status)) }
                            td { (progress(job.counters.processed, job.counters.total, false)) }
                            td { (job.counters.error) }
                            td.meta { (format_ms(job.submit_time_ms).unwrap_or_default()) }
                        }
                    }
                }
            }
        }
        p.meta { (if running { "Refreshing every 2 s while jobs run." } else { "" }) }
    };
    page("Jobs", running.then_some(2), body).into_response()
}

#[derive(Debug, Default, Deserialize)]
struct JobQuery {
    failed: Option<u64>,
}

/// The job id of a path, or the page saying there is no such job.
/// The job id of a `/ui/jobs/{id}` path; one that is no job id answers the 404 page.
struct JobPath(JobId);

impl<S: Send + Sync> FromRequestParts<S> for JobPath {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        JobId::parse(&raw)
            .map(JobPath)
            .map_err(|_| error_page(StatusCode::NOT_FOUND, &format!("No job {raw:?}.")))
    }
}

async fn job_page(
    State(console): State<Console>,
    Extension(caller): Extension<Caller>,
    JobPath(id): JobPath,
    Query(q): Query<JobQuery>,
) -> Response {
    let job = match console.service.get_job(&caller.account_id, &id).await {
        Ok(job) => job,
        Err(e) => return service_error(e),
    };
    let now = now_ms();
    let samples = console.sample(&job, now);
    let offset = q.failed.unwrap_or(0);
    let failed = match console
        .service
        .failed_records(&job, offset, FAILED_PAGE)
        .await
    {
        Ok(page) => page,
        Err(e) => return service_error(e),
    };
    let analysis = if job.status.is_terminal() {
        console.service.job_analysis(&job).await
    } else {
        None
    };
    let body = job_body(&job, now, &samples, &failed, offset, analysis.as_ref());
    let refresh = (!job.status.is_terminal()).then_some(1);
    page(&job.request.name, refresh, body).into_response()
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Console {
    /// Records `(now, processed)` for a running job; returns the job's samples.
    fn sample(&self, job: &Job, now: i64) -> Vec<(i64, u64)> {
        let mut all = self
            .samples
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let samples = all.entry(job.id.clone()).or_default();
        if !job.status.is_terminal() || samples.is_empty() {
            samples.push_back((now, job.counters.processed));
            while samples.len() > SAMPLES {
                samples.pop_front();
            }
        }
        samples.iter().copied().collect()
    }
}

/// Records/s between consecutive samples (at least half a second apart).
fn rates(samples: &[(i64, u64)]) -> Vec<(i64, f64)> {
    let mut out = Vec::new();
    let mut last: Option<(i64, u64)> = None;
    for &(t, n) in samples {
        match last {
            Some((t0, n0)) if t - t0 >= 500 => {
                out.push((t, n.saturating_sub(n0) as f64 * 1000.0 / (t - t0) as f64));
                last = Some((t, n));
            }
            Some(_) => {}
            None => last = Some((t, n)),
        }
    }
    out
}

fn chart(rates: &[(i64, f64)]) -> Markup {
    let (w, h, pad) = (720.0, 160.0, 30.0);
    let Some(&(t0, _)) = rates.first() else {
        return html! { p.muted { "The throughput chart fills in while this page is open on a running job." } };
    };
    let t1 = rates.last().map_or(t0 + 1, |r| r.0).max(t0 + 1);
    let top = rates.iter().map(|r| r.1).fold(1.0_f64, f64::max) * 1.1;
    let x = |t: i64| pad + (t - t0) as f64 / (t1 - t0) as f64 * (w - 2.0 * pad);
    let y = |r: f64| h - pad - r / top * (h - 2.0 * pad);
    let points: Vec<String> = rates
        .iter()
        .map(|&(t, r)| format!("{:.1},{:.1}", x(t), y(r)))
        .collect();
    html! {
        svg viewBox=(format!("0 0 {w} {h}")) role="img" aria-label="records per second over time" {
            line x1=(pad) y1=(h - pad) x2=(w - pad) y2=(h - pad) stroke="#b9c0cc" {}
            line x1=(pad) y1=(pad) x2=(pad) y2=(h - pad) stroke="#b9c0cc" {}
            text x="4" y=(pad) font-size="11" fill="#5b6475" { (format!("{top:.0}/s")) }
            text x="4" y=(h - pad) font-size="11" fill="#5b6475" { "0" }
            text x=(w - pad) y=(h - 8.0) font-size="11" fill="#5b6475" text-anchor="end" {
                (format!("last {:.0} s", (t1 - t0) as f64 / 1000.0))
            }
            polyline points=(points.join(" ")) fill="none" stroke="#2f7de1" stroke-width="2" {}
        }
    }
}

fn job_body(
    job: &Job,
    now: i64,
    samples: &[(i64, u64)],
    failed: &FailedPage,
    offset: u64,
    analysis: Option<&serde_json::Value>,
) -> Markup {
    let c = &job.counters;
    let end = job.end_time_ms.unwrap_or(now);
    let elapsed = (end - job.submit_time_ms).max(1) as f64 / 1000.0;
    let rates = rates(samples);
    // The recent rate while it runs (the last 10 s of samples), the overall one once ended.
    let recent: Vec<f64> = rates
        .iter()
        .filter(|r| r.0 >= now - 10_000)
        .map(|r| r.1)
        .collect();
    let rate = if job.status.is_terminal() || recent.is_empty() {
        c.processed as f64 / elapsed
    } else {
        recent.iter().sum::<f64>() / recent.len() as f64
    };
    let eta = (!job.status.is_terminal() && rate > 0.0 && c.total > c.processed)
        .then(|| (c.total - c.processed) as f64 / rate);
    let id = job.id.as_str();
    html! {
        p.meta { a href="/ui" { "← All jobs" } }
        h1 { (job.request.name) " " (status_badge(job.status)) }
        p.meta {
            (job.request.dialect.kind().as_str()) " · " code { (job.request.model_id) } " · "
            code { (job.arn) } " · submitted " (format_ms(job.submit_time_ms).unwrap_or_default())
            @if let Some(end) = job.end_time_ms { " · ended " (format_ms(end).unwrap_or_default()) }
        }
        @if let Some(message) = &job.message { p { (message) } }
        (progress(c.processed, c.total, true))
        div.cards {
            div.card { small { "Processed" } b #processed { (c.processed) } }
            div.card { small { "Total" } b #total { (c.total) } }
            div.card { small { "Succeeded" } b #succeeded { (c.success) } }
            div.card { small { "Failed" } b #failed-count { (c.error) } }
            div.card { small { "Records/s" } b #rate { (format!("{rate:.1}")) } }
            div.card { small { "ETA" } b #eta { (eta.map_or("–".to_owned(), |s| format!("{s:.0} s"))) } }
            div.card { small { "Tokens in / out" } b { (c.input_tokens) " / " (c.output_tokens) } }
        }
        @if !job.status.is_terminal() {
            form method="post" action=(format!("/ui/jobs/{id}/stop")) {
                button.stop type="submit" #stop { "Stop job" }
            }
        }
        h2 { "Throughput" }
        (chart(&rates))
        h2 #failed-records { "Failed records" }
        @if failed.records.is_empty() {
            p.muted { (match (offset, job.status.is_terminal()) {
                (0, true) => "No failed records.",
                (0, false) => "No failed records so far.",
                _ => "No more failed records.",
            }) }
        } @else {
            table #failed-table {
                thead { tr { th { "Record id" } th { "Where" } th { "Error code" } th { "Message" } th { "Input" } } }
                tbody {
                    @for r in &failed.records {
                        tr {
                            td { code { (r.id) } }
                            td.meta { (r.file) ":" (r.position) }
                            td { code { (r.code) } }
                            td.msg { (r.message) }
                            td { @if let Some(input) = &r.input {
                                details { summary { "show" } pre { (input) } }
                            } @else { span.muted { "–" } } }
                        }
                    }
                }
            }
        }
        div.pager {
            @if offset > 0 {
                a href=(format!("/ui/jobs/{id}?failed={}#failed-records", offset.saturating_sub(FAILED_PAGE as u64))) { "← Previous" }
            }
            @if failed.more {
                a href=(format!("/ui/jobs/{id}?failed={}#failed-records", offset + FAILED_PAGE as u64)) #next-failed { "Next →" }
            }
        }
        @if let Some(analysis) = analysis {
            h2 { "Analysis" }
            pre #analysis { (serde_json::to_string_pretty(analysis).unwrap_or_default()) }
        }
    }
}

async fn stop(
    State(console): State<Console>,
    Extension(caller): Extension<Caller>,
    JobPath(id): JobPath,
) -> Response {
    match console.service.stop_job(&caller.account_id, &id).await {
        // Back to the job's page, which shows Stopping and then Stopped.
        Ok(()) | Err(ServiceError::Conflict(_)) => {
            Redirect::to(&format!("/ui/jobs/{id}")).into_response()
        }
        Err(e) => service_error(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_come_from_samples_half_a_second_apart() {
        let r = rates(&[(0, 0), (200, 5), (1000, 10), (2000, 30)]);
        assert_eq!(r, vec![(1000, 10.0), (2000, 20.0)]);
    }

    #[test]
    fn progress_never_passes_full() {
        let html = progress(12, 10, false).into_string();
        assert!(html.contains("width:100.0%"), "{html}");
        assert!(progress(0, 0, false).into_string().contains("width:0.0%"));
    }
}
