//! Batch-invariant answers: a llama.cpp context whose CPU backend runs ggml's reference
//! kernels, so a greedy answer no longer depends on what else was in the batch.
//!
//! Why this is needed: ggml picks a CPU kernel by the shape of each batch (tinyBLAS for two
//! rows or more and `vec_dot` for one; tiled, split or plain flash attention by the number of
//! queries), and those kernels sum in different orders. With one KV stream per sequence every
//! reference kernel computes a row the same way whatever the batch holds.
//!
//! How: ggml's CPU backend has the switch (`ggml_backend_cpu_set_use_ref`), but llama.cpp
//! creates its backends itself and exposes none. So the CPU device's `init_backend` entry is
//! wrapped once: on a thread inside [`with_reference_kernels`], the wrapper sets the switch
//! on the backend it returns; on any other thread it changes nothing. The device entry table
//! (`struct ggml_backend_device_i`) is the interface ggml's loadable backends implement,
//! versioned by `GGML_BACKEND_API_VERSION`; the version and the layout are checked against
//! ggml's own accessors before anything is written, and the mode is refused if they differ.
#![allow(unsafe_code)]

use std::cell::Cell;
use std::ffi::{c_char, c_void};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicPtr, Ordering};

use llama_cpp_sys_2 as sys;

type InitBackend =
    unsafe extern "C" fn(sys::ggml_backend_dev_t, *const c_char) -> sys::ggml_backend_t;

/// The first entries of ggml's `struct ggml_backend_device_i` (ggml-backend-impl.h), with which
/// `struct ggml_backend_device` begins, as of `GGML_BACKEND_API_VERSION` 3.
#[repr(C)]
struct DeviceInterface {
    get_name: Option<unsafe extern "C" fn(sys::ggml_backend_dev_t) -> *const c_char>,
    get_description: Option<unsafe extern "C" fn(sys::ggml_backend_dev_t) -> *const c_char>,
    get_memory: Option<unsafe extern "C" fn(sys::ggml_backend_dev_t, *mut usize, *mut usize)>,
    get_type: Option<unsafe extern "C" fn(sys::ggml_backend_dev_t) -> sys::ggml_backend_dev_type>,
    get_props: Option<unsafe extern "C" fn(sys::ggml_backend_dev_t, *mut c_void)>,
    init_backend: Option<InitBackend>,
}

/// The `GGML_BACKEND_API_VERSION` [`DeviceInterface`] was written for.
const API_VERSION: i32 = 3;

thread_local! {
    static WANTED: Cell<bool> = const { Cell::new(false) };
}

/// ggml's own `init_backend` of the CPU device, saved before the wrapper is installed.
static ORIGINAL: OnceLock<InitBackend> = OnceLock::new();

unsafe extern "C" fn init_backend(
    dev: sys::ggml_backend_dev_t,
    params: *const c_char,
) -> sys::ggml_backend_t {
    let Some(original) = ORIGINAL.get() else {
        return std::ptr::null_mut();
    };
    // SAFETY: ggml's own entry, called with the arguments ggml passed.
    let backend = unsafe { original(dev, params) };
    // SAFETY: a backend ggml just created, checked to be a CPU backend before the call.
    if !backend.is_null() && WANTED.get() && unsafe { sys::ggml_backend_is_cpu(backend) } {
        unsafe { sys::ggml_backend_cpu_set_use_ref(backend, true) };
    }
    backend
}

/// Installs the wrapper, once per process.
fn install() -> Result<(), String> {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    // SAFETY: see `wrap_cpu_device`.
    INSTALLED
        .get_or_init(|| unsafe { wrap_cpu_device() })
        .clone()
}

/// # Safety
/// Reads and writes ggml's CPU device table; callable once (from [`install`]).
unsafe fn wrap_cpu_device() -> Result<(), String> {
    let refuse = |why: &str| {
        Err(format!(
            "batch_invariant is not supported by this llama.cpp build: {why}"
        ))
    };
    // SAFETY: ggml's public accessors; the CPU device is a static of ggml-cpu.
    let dev = unsafe { sys::ggml_backend_dev_by_type(sys::GGML_BACKEND_DEVICE_TYPE_CPU) };
    if dev.is_null() {
        return refuse("no CPU device");
    }
    let reg = unsafe { sys::ggml_backend_dev_backend_reg(dev) };
    if reg.is_null() {
        return refuse("the CPU device has no registry");
    }
    // `struct ggml_backend_reg` begins with `int api_version`.
    let version = unsafe { *reg.cast::<i32>() };
    if version != API_VERSION {
        return refuse(&format!(
            "ggml backend API version {version}, expected {API_VERSION}"
        ));
    }
    let table = dev.cast::<DeviceInterface>();
    // The layout, checked against ggml's accessors, which call through these same entries.
    let (Some(get_name), Some(get_description), Some(get_type), Some(original)) = (unsafe {
        (
            (*table).get_name,
            (*table).get_description,
            (*table).get_type,
            (*table).init_backend,
        )
    }) else {
        return refuse("the CPU device table has empty entries");
    };
    let same = unsafe {
        get_name(dev) == sys::ggml_backend_dev_name(dev)
            && get_description(dev) == sys::ggml_backend_dev_description(dev)
            && get_type(dev) == sys::ggml_backend_dev_type(dev)
            && get_type(dev) == sys::GGML_BACKEND_DEVICE_TYPE_CPU
    };
    if !same {
        return refuse("the CPU device table has another layout");
    }
    if ORIGINAL.set(original).is_err() {
        return refuse("installed twice");
    }
    // SAFETY: the entry is a pointer-sized, aligned field of a static; ggml reads it only when
    // it creates a backend, and an aligned pointer store is never seen half-written.
    let entry = unsafe { std::ptr::addr_of_mut!((*table).init_backend) }.cast::<*mut c_void>();
    unsafe { AtomicPtr::from_ptr(entry) }
        .store(init_backend as InitBackend as *mut c_void, Ordering::SeqCst);
    Ok(())
}

/// Runs `create` (which creates a llama.cpp context on this thread) so that the context's CPU
/// backend uses the reference kernels.
pub(crate) fn with_reference_kernels<T>(create: impl FnOnce() -> T) -> Result<T, String> {
    install()?;
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            WANTED.set(false);
        }
    }
    WANTED.set(true);
    let _reset = Reset;
    Ok(create())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wrapper is installed and the switch reaches backends made on this thread only.
    #[test]
    fn the_cpu_device_is_wrapped_and_still_makes_cpu_backends() {
        let made = with_reference_kernels(|| unsafe {
            let dev = sys::ggml_backend_dev_by_type(sys::GGML_BACKEND_DEVICE_TYPE_CPU);
            sys::ggml_backend_dev_init(dev, std::ptr::null())
        })
        .unwrap();
        assert!(!made.is_null());
        unsafe {
            assert!(sys::ggml_backend_is_cpu(made));
            sys::ggml_backend_free(made);
        }
        let dev = unsafe { sys::ggml_backend_dev_by_type(sys::GGML_BACKEND_DEVICE_TYPE_CPU) };
        let entry = unsafe { (*dev.cast::<DeviceInterface>()).init_backend };
        assert_eq!(
            entry.map(|f| f as *const c_void),
            Some(init_backend as InitBackend as *const c_void)
        );
        assert!(!WANTED.get(), "the switch is off again after the call");
        // A second call reuses the wrapper.
        assert_eq!(with_reference_kernels(|| 7), Ok(7));
    }
}
