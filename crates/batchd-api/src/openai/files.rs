//! The Files API: `POST /v1/files` (multipart, streamed to storage), `GET /v1/files`,
//! `GET /v1/files/{file_id}`, `GET /v1/files/{file_id}/content` (streamed) and
//! `DELETE /v1/files/{file_id}`.
//!
//! An upload's `purpose` and `expires_after[...]` fields must come before its `file` part
//! (the SDKs and `curl -F purpose=... -F file=@...` send them so): the file is streamed to
//! storage as it arrives, never held whole, so what it is for must be known by then.

use axum::body::Body;
use axum::extract::multipart::{Field, MultipartError, MultipartRejection};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Extension, Multipart, Path, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use batchd_core::{FileFilter, FileRecord, PURPOSE_BATCH};
use futures::TryStreamExt;
use serde_json::{Value, json};
use std::sync::Arc;

use super::{OpenAiError, method_not_allowed};
use crate::auth::Caller;
use crate::{FileService, ServiceError};

/// How long an uploaded batch file lives without `expires_after`: OpenAI's 30 days.
pub const DEFAULT_BATCH_EXPIRY_SECONDS: i64 = 30 * 24 * 3600;
/// The `expires_after[seconds]` OpenAI accepts: one hour to 30 days.
pub const EXPIRES_AFTER_SECONDS: std::ops::RangeInclusive<i64> = 3600..=2_592_000;
/// `GET /v1/files`' `limit`: 1 to 10,000, default 10,000.
pub const LIST_LIMIT: std::ops::RangeInclusive<u32> = 1..=10_000;
/// The largest non-file field of an upload (`purpose`, `expires_after[...]`).
const MAX_FIELD_BYTES: usize = 1024;

#[derive(Clone)]
struct FilesState {
    files: Arc<dyn FileService>,
    max_file_bytes: u64,
}

type Answer = Result<Json<Value>, OpenAiError>;

pub fn routes(files: Arc<dyn FileService>, max_file_bytes: u64) -> Router {
    Router::new()
        .route(
            "/v1/files",
            // The upload checks its own size limit as it streams; the router's small body
            // limit is for JSON requests.
            get(list)
                .post(upload)
                .layer(DefaultBodyLimit::disable())
                .fallback(method_not_allowed),
        )
        .route(
            "/v1/files/{file_id}",
            get(retrieve).delete(delete).fallback(method_not_allowed),
        )
        .route(
            "/v1/files/{file_id}/content",
            get(content).fallback(method_not_allowed),
        )
        .with_state(FilesState {
            files,
            max_file_bytes,
        })
}

/// The File object.
pub fn file_object(file: &FileRecord) -> Value {
    json!({
        "id": file.id,
        "object": "file",
        "bytes": file.bytes,
        "created_at": file.created_at,
        "filename": file.filename,
        "purpose": file.purpose,
        // Deprecated by OpenAI, still in its objects: a stored file is "processed".
        "status": "processed",
        "expires_at": file.expires_at,
        "status_details": null,
    })
}

/// A service error about one file: NotFound in OpenAI's words.
fn file_error(id: &str, e: ServiceError) -> OpenAiError {
    match e {
        ServiceError::NotFound(_) => {
            OpenAiError::not_found(format!("No such File object: {id}")).with_param("id")
        }
        e => e.into(),
    }
}

fn file_id(path: Result<Path<String>, PathRejection>) -> Result<String, OpenAiError> {
    path.map(|Path(id)| id)
        .map_err(|e| OpenAiError::invalid(e.body_text(), Some("file_id")))
}

fn malformed(e: MultipartError) -> OpenAiError {
    OpenAiError::invalid(
        format!("The multipart body is malformed: {}", e.body_text()),
        None,
    )
}

/// The fields of an upload read so far.
#[derive(Default)]
struct UploadFields {
    purpose: Option<String>,
    anchor: Option<String>,
    seconds: Option<String>,
}

impl UploadFields {
    /// What the `file` part is stored with: the purpose and the expiry in seconds.
    fn check(&self) -> Result<(&str, i64), OpenAiError> {
        let purpose = self.purpose.as_deref().ok_or_else(|| {
            OpenAiError::invalid(
                "Missing required parameter: 'purpose' (it must come before 'file' in the \
                 multipart body).",
                Some("purpose"),
            )
        })?;
        if purpose != PURPOSE_BATCH {
            return Err(OpenAiError::invalid(
                format!("Invalid purpose '{purpose}': batchd stores files of purpose 'batch'."),
                Some("purpose"),
            ));
        }
        let expires = match (&self.anchor, &self.seconds) {
            (None, None) => DEFAULT_BATCH_EXPIRY_SECONDS,
            (Some(anchor), _) if anchor != "created_at" => {
                return Err(OpenAiError::invalid(
                    format!("Invalid 'expires_after[anchor]': '{anchor}'; expected 'created_at'."),
                    Some("expires_after.anchor"),
                ));
            }
            (Some(_), Some(seconds)) => seconds
                .trim()
                .parse::<i64>()
                .ok()
                .filter(|s| EXPIRES_AFTER_SECONDS.contains(s))
                .ok_or_else(|| {
                    OpenAiError::invalid(
                        format!(
                            "Invalid 'expires_after[seconds]': '{seconds}'; expected an integer \
                             from {} to {}.",
                            EXPIRES_AFTER_SECONDS.start(),
                            EXPIRES_AFTER_SECONDS.end()
                        ),
                        Some("expires_after.seconds"),
                    )
                })?,
            (None, Some(_)) | (Some(_), None) => {
                return Err(OpenAiError::invalid(
                    "'expires_after' needs both 'expires_after[anchor]' and \
                     'expires_after[seconds]'.",
                    Some("expires_after"),
                ));
            }
        };
        Ok((purpose, expires))
    }
}

/// A small text field, refused past [`MAX_FIELD_BYTES`].
async fn text_field(mut field: Field<'_>, name: &str) -> Result<String, OpenAiError> {
    let mut text = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(malformed)? {
        text.extend_from_slice(&chunk);
        if text.len() > MAX_FIELD_BYTES {
            return Err(OpenAiError::invalid(
                format!("'{name}' is longer than {MAX_FIELD_BYTES} bytes."),
                Some(name),
            ));
        }
    }
    String::from_utf8(text)
        .map_err(|_| OpenAiError::invalid(format!("'{name}' is not UTF-8 text."), Some(name)))
}

/// Reads the rest of a refused upload before answering: a client that is still sending
/// would otherwise see the connection close instead of the error.
async fn drain(multipart: &mut Multipart) {
    while let Ok(Some(mut field)) = multipart.next_field().await {
        while let Ok(Some(_)) = field.chunk().await {}
    }
}

/// `POST /v1/files`.
async fn upload(
    State(state): State<FilesState>,
    Extension(caller): Extension<Caller>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Answer {
    let mut multipart = multipart.map_err(|e| OpenAiError::invalid(e.body_text(), None))?;
    let account = caller.account_id.as_str();
    let result = read_upload(&state, account, &mut multipart).await;
    match result {
        Ok(file) => Ok(Json(file_object(&file))),
        Err((e, uploaded)) => {
            drain(&mut multipart).await;
            if let Some(file) = uploaded
                && let Err(delete) = state.files.delete(account, &file.id).await
            {
                tracing::warn!(file = %file.id, error = %delete, "cannot remove a refused upload");
            }
            Err(e)
        }
    }
}

/// The upload's fields in order; an error carries the file already stored, if any, for the
/// caller to remove.
async fn read_upload(
    state: &FilesState,
    account: &str,
    multipart: &mut Multipart,
) -> Result<FileRecord, (OpenAiError, Option<FileRecord>)> {
    let mut fields = UploadFields::default();
    let mut uploaded: Option<FileRecord> = None;
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) => return Err((malformed(e), uploaded)),
        };
        let name = field.name().unwrap_or_default().to_owned();
        let slot = match name.as_str() {
            "purpose" => &mut fields.purpose,
            "expires_after[anchor]" => &mut fields.anchor,
            "expires_after[seconds]" => &mut fields.seconds,
            "file" => {
                if uploaded.is_some() {
                    let e = OpenAiError::invalid("Only one 'file' per upload.", Some("file"));
                    return Err((e, uploaded));
                }
                match store_file(state, account, &fields, field).await {
                    Ok(file) => uploaded = Some(file),
                    Err(e) => return Err((e, None)),
                }
                continue;
            }
            // Fields OpenAI may add later are not ours to refuse.
            _ => continue,
        };
        if uploaded.is_some() {
            let e = OpenAiError::invalid(
                format!("'{name}' must come before 'file' in the multipart body."),
                Some(&name),
            );
            return Err((e, uploaded));
        }
        *slot = Some(text_field(field, &name).await.map_err(|e| (e, None))?);
    }
    match uploaded {
        Some(file) => Ok(file),
        None => {
            // A missing purpose is the first thing OpenAI names.
            let e = fields.check().err().unwrap_or_else(|| {
                OpenAiError::invalid("Missing required parameter: 'file'.", Some("file"))
            });
            Err((e, None))
        }
    }
}

/// Streams the `file` part to storage under the fields read before it.
async fn store_file(
    state: &FilesState,
    account: &str,
    fields: &UploadFields,
    field: Field<'_>,
) -> Result<FileRecord, OpenAiError> {
    let (purpose, expires_after) = fields.check()?;
    let Some(filename) = field.file_name().map(str::to_owned) else {
        return Err(OpenAiError::invalid(
            "'file' must be a file part (with a filename).",
            Some("file"),
        ));
    };
    if !filename.to_ascii_lowercase().ends_with(".jsonl") {
        return Err(OpenAiError::invalid(
            "Invalid file format for Batch API. Must be .jsonl",
            Some("file"),
        ));
    }
    let body = field.map_err(std::io::Error::other);
    state
        .files
        .upload(
            account,
            &filename,
            purpose,
            Some(expires_after),
            Box::pin(body),
            state.max_file_bytes,
        )
        .await
        .map_err(|e| match e {
            ServiceError::Validation(m) => OpenAiError::invalid(m, Some("file")),
            e => e.into(),
        })
}

/// `GET /v1/files`: `purpose`, `limit`, `after`, `order` (`desc` by default).
async fn list(
    State(state): State<FilesState>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Answer {
    let Query(pairs) = query.map_err(|e| OpenAiError::invalid(e.body_text(), None))?;
    let mut filter = FileFilter {
        account_id: Some(caller.account_id),
        purpose: None,
        after: None,
        limit: *LIST_LIMIT.end(),
        ascending: false,
    };
    for (key, value) in pairs {
        match key.as_str() {
            "purpose" if !value.is_empty() => filter.purpose = Some(value),
            "after" if !value.is_empty() => filter.after = Some(value),
            "limit" => {
                filter.limit = value
                    .parse()
                    .ok()
                    .filter(|n| LIST_LIMIT.contains(n))
                    .ok_or_else(|| {
                        OpenAiError::invalid(
                            format!(
                                "Invalid 'limit': '{value}'; expected an integer from {} to {}.",
                                LIST_LIMIT.start(),
                                LIST_LIMIT.end()
                            ),
                            Some("limit"),
                        )
                    })?;
            }
            "order" => {
                filter.ascending = match value.as_str() {
                    "asc" => true,
                    "desc" => false,
                    _ => {
                        return Err(OpenAiError::invalid(
                            format!("Invalid 'order': '{value}'; expected 'asc' or 'desc'."),
                            Some("order"),
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    let limit = filter.limit as usize;
    // One more than the page tells whether there is a next one.
    filter.limit += 1;
    let mut files = state.files.list(filter).await?;
    let has_more = files.len() > limit;
    files.truncate(limit);
    let data: Vec<Value> = files.iter().map(file_object).collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "first_id": files.first().map(|f| &f.id),
        "last_id": files.last().map(|f| &f.id),
        "has_more": has_more,
    })))
}

/// `GET /v1/files/{file_id}`.
async fn retrieve(
    State(state): State<FilesState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
) -> Answer {
    let id = file_id(path)?;
    let file = state
        .files
        .get(&caller.account_id, &id)
        .await
        .map_err(|e| file_error(&id, e))?;
    Ok(Json(file_object(&file)))
}

/// `DELETE /v1/files/{file_id}`.
async fn delete(
    State(state): State<FilesState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
) -> Answer {
    let id = file_id(path)?;
    state
        .files
        .delete(&caller.account_id, &id)
        .await
        .map_err(|e| file_error(&id, e))?;
    Ok(Json(json!({"id": id, "object": "file", "deleted": true})))
}

/// `GET /v1/files/{file_id}/content`: the bytes as uploaded (or published), streamed.
async fn content(
    State(state): State<FilesState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, OpenAiError> {
    let id = file_id(path)?;
    let account = caller.account_id.as_str();
    let file = state
        .files
        .get(account, &id)
        .await
        .map_err(|e| file_error(&id, e))?;
    let stream = state
        .files
        .content(account, &id)
        .await
        .map_err(|e| file_error(&id, e))?;
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(file.bytes));
    // The name as a quoted string: anything that would need escaping becomes `_`.
    let name: String = file
        .filename
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(purpose: Option<&str>, anchor: Option<&str>, seconds: Option<&str>) -> UploadFields {
        UploadFields {
            purpose: purpose.map(str::to_owned),
            anchor: anchor.map(str::to_owned),
            seconds: seconds.map(str::to_owned),
        }
    }

    #[test]
    fn upload_fields_give_the_purpose_and_expiry_or_name_the_bad_one() {
        let ok = |f: UploadFields| f.check().map(|(p, s)| (p.to_owned(), s)).unwrap();
        assert_eq!(
            ok(fields(Some("batch"), None, None)),
            ("batch".into(), 2_592_000)
        );
        assert_eq!(
            ok(fields(Some("batch"), Some("created_at"), Some("3600"))),
            ("batch".into(), 3600)
        );
        let param = |f: UploadFields| f.check().unwrap_err().param.unwrap();
        assert_eq!(param(fields(None, None, None)), "purpose");
        assert_eq!(param(fields(Some("fine-tune"), None, None)), "purpose");
        assert_eq!(
            param(fields(Some("batch"), Some("last_active_at"), Some("3600"))),
            "expires_after.anchor"
        );
        for bad in ["3599", "2592001", "1e4", "", "-1"] {
            assert_eq!(
                param(fields(Some("batch"), Some("created_at"), Some(bad))),
                "expires_after.seconds",
                "{bad}"
            );
        }
        assert_eq!(
            param(fields(Some("batch"), None, Some("3600"))),
            "expires_after"
        );
        assert_eq!(
            param(fields(Some("batch"), Some("created_at"), None)),
            "expires_after"
        );
    }

    #[test]
    fn the_file_object_has_openais_members() {
        let file = FileRecord {
            id: "file-abc".into(),
            account_id: "000000000000".into(),
            bytes: 12,
            created_at: 1_700_000_000,
            expires_at: None,
            filename: "in.jsonl".into(),
            purpose: "batch_output".into(),
            uri: "/data/files/file-abc".into(),
        };
        assert_eq!(
            file_object(&file),
            json!({
                "id": "file-abc", "object": "file", "bytes": 12, "created_at": 1_700_000_000,
                "filename": "in.jsonl", "purpose": "batch_output", "status": "processed",
                "expires_at": null, "status_details": null,
            })
        );
    }
}
