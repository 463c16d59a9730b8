//! Meta Llama bodies (`meta.llama*`, spec A6): a raw `prompt` with the chat template applied
//! by the caller (Llama 3 headers or Llama 2 `[INST]`), parsed back into turns; Llama 3.2
//! vision `images`; the native response.

use serde_json::{Value, json};

use super::{answer_text, body, prompt, prompt_request};
use crate::converse::check::{Checker, Path, member};
use crate::converse::request::{Setting, base64, settings};
use crate::neutral::{ChatRequest, ChatResponse, ContentPart, Role, StopReason};

/// Where a Llama 3.2 prompt puts an image.
const IMAGE_TOKEN: &str = "<|image|>";

pub(super) fn request(cx: &mut Checker, root: &Path<'_>, value: &Value) -> Option<ChatRequest> {
    let map = body(
        cx,
        root,
        value,
        &["prompt", "max_gen_len", "temperature", "top_p", "images"],
    )?;
    let mut req = ChatRequest::default();
    let keys = [
        ("max_gen_len", Setting::MaxTokens),
        ("temperature", Setting::Temperature),
        ("top_p", Setting::TopP),
    ];
    settings(cx, root, map, &keys, &mut req);
    let images = member(map, "images").and_then(|v| images(cx, &root.key("images"), v));
    let template = |text: &str| prompt::llama3(text).or_else(|| prompt::inst(text));
    let mut req = prompt_request(cx, (root, map, "prompt"), template, req)?;
    if let Some(images) = images.filter(|i| !i.is_empty()) {
        attach_images(&mut req, images);
    }
    Some(req)
}

fn images(cx: &mut Checker, path: &Path<'_>, value: &Value) -> Option<Vec<ContentPart>> {
    let items = cx.array(path, value)?;
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let path = path.index(i);
        let Some(data) = base64(cx, &path, item) else {
            continue;
        };
        let Some(format) = image_format(data) else {
            cx.defect(&path, "must be a PNG, JPEG, GIF or WebP image");
            continue;
        };
        out.push(ContentPart::Image {
            format: format.to_owned(),
            data_base64: data.to_owned(),
        });
    }
    Some(out)
}

/// The image format from the base64 of its magic bytes (the body does not name it).
fn image_format(data: &str) -> Option<&'static str> {
    [
        ("iVBORw0KGgo", "png"),
        ("/9j/", "jpeg"),
        ("R0lGOD", "gif"),
        ("UklGR", "webp"),
    ]
    .iter()
    .find(|(prefix, _)| data.starts_with(prefix))
    .map(|(_, format)| *format)
}

/// Puts the images before the text of the user turn that holds `<|image|>` (else the first
/// user turn), where the Llama 3.2 template puts them, and drops the image tokens.
fn attach_images(req: &mut ChatRequest, images: Vec<ContentPart>) {
    let holds_token = |m: &crate::neutral::ChatMessage| {
        m.content
            .iter()
            .any(|p| matches!(p, ContentPart::Text(t) if t.contains(IMAGE_TOKEN)))
    };
    let index = req
        .messages
        .iter()
        .position(holds_token)
        .or_else(|| req.messages.iter().position(|m| m.role == Role::User));
    for message in &mut req.messages {
        for part in &mut message.content {
            if let ContentPart::Text(text) = part
                && text.contains(IMAGE_TOKEN)
            {
                *text = text.replace(IMAGE_TOKEN, "").trim().to_owned();
            }
        }
        // A turn that was only an image token keeps no empty text part.
        message
            .content
            .retain(|p| !matches!(p, ContentPart::Text(t) if t.is_empty()));
    }
    match index.and_then(|i| req.messages.get_mut(i)) {
        Some(message) => {
            message.content.splice(0..0, images);
        }
        None => req.messages.insert(
            0,
            crate::neutral::ChatMessage {
                role: Role::User,
                content: images,
            },
        ),
    }
}

pub(super) fn render(response: &ChatResponse) -> Value {
    json!({
        "generation": answer_text(response),
        "prompt_token_count": response.usage.input_tokens,
        "generation_token_count": response.usage.output_tokens,
        "stop_reason": match response.stop_reason {
            StopReason::MaxTokens | StopReason::ModelContextWindowExceeded => "length",
            _ => "stop",
        },
    })
}
