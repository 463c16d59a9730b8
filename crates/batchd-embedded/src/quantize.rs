//! Q8_0 weights for the chat model, derived from the shipped Q4_1 GGUF with llama.cpp's
//! quantizer and cached beside it. Unsafe code (with `chat/reference.rs`, the crate's only
//! other): llama-cpp-2 has no safe wrapper for `llama_model_quantize`.
//!
//! Why: llama.cpp has no batched (GEMM) kernel for Q4_1, so batching many sequences saves
//! little; Q8_0 takes its tiled GEMM path and decodes 64 sequences about 1.6× faster, with the
//! same single-stream speed and (8-bit re-quantization of 4-bit values) the same answers.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::EmbeddedError;

/// The Q8_0 file derived from `source`: `<stem>.q8_0.gguf` beside it, made (in about a second)
/// when missing or older than `source`. Written to a temporary name and renamed, so concurrent
/// processes and interrupted runs never see a partial file.
pub fn q8_0_weights(source: &Path) -> Result<PathBuf, EmbeddedError> {
    let stem = source
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("model");
    let target = source.with_file_name(format!("{stem}.q8_0.gguf"));
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if let (Some(made), Some(src)) = (modified(&target), modified(source))
        && made >= src
    {
        return Ok(target);
    }
    // Unique per process and call: concurrent loads never write the same file.
    static CALLS: AtomicU32 = AtomicU32::new(0);
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    let temp = source.with_file_name(format!(".{stem}.q8_0.{}.{call}.tmp", std::process::id()));
    let result = to_q8_0(source, &temp)
        .and_then(|()| std::fs::rename(&temp, &target).map_err(|e| format!("cannot rename: {e}")));
    if let Err(message) = result {
        let _ = std::fs::remove_file(&temp);
        return Err(EmbeddedError::LoadChat {
            path: target,
            message: format!("cannot convert the weights to Q8_0: {message}"),
        });
    }
    Ok(target)
}

/// Writes `output`: `input` with every quantized weight converted to Q8_0.
fn to_q8_0(input: &Path, output: &Path) -> Result<(), String> {
    crate::chat::backend()?;
    let c_path = |p: &Path| {
        p.to_str()
            .and_then(|s| CString::new(s).ok())
            .ok_or_else(|| format!("{} is not a valid UTF-8 path", p.display()))
    };
    let (input_c, output_c) = (c_path(input)?, c_path(output)?);
    // SAFETY: returns a plain struct by value; its pointer fields are null.
    let mut params = unsafe { llama_cpp_sys_2::llama_model_quantize_default_params() };
    // 0: one thread per core.
    params.nthread = 0;
    params.ftype = llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q8_0;
    // The shipped weights are already quantized (Q4_1).
    params.allow_requantize = true;
    // SAFETY: both paths are NUL-terminated strings that outlive the call; `params` is a valid
    // struct whose pointer fields (imatrix, overrides, prune list) are the defaults' nulls.
    let status = unsafe {
        llama_cpp_sys_2::llama_model_quantize(input_c.as_ptr(), output_c.as_ptr(), &params)
    };
    if status == 0 {
        Ok(())
    } else {
        Err(format!("llama_model_quantize returned {status}"))
    }
}
