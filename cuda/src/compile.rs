//! Run-time compilation of the merge kernels with NVRTC, straight to a CUBIN
//! for the device's own architecture (`sm_90` on Hopper), so the driver loads
//! machine code and never JIT-compiles PTX.

use std::collections::HashMap;
use std::ffi::{c_char, CString};
use std::sync::{Mutex, OnceLock};

use cudarc::nvrtc::{result, sys};

use crate::error::GpuError;
use crate::probe::nvrtc_library_present;

/// CUBINs already compiled in this process, by (source, architecture).
type CubinCache = Mutex<HashMap<(String, String), Vec<u8>>>;

/// NVRTC options besides the architecture.
const BASE_OPTIONS: &[&str] = &["--std=c++17", "--device-as-default-execution-space"];

/// NVRTC entry points this module calls (cudarc panics on a missing one).
const REQUIRED_SYMBOLS: &[&str] = &[
    "nvrtcCreateProgram",
    "nvrtcCompileProgram",
    "nvrtcGetProgramLogSize",
    "nvrtcGetProgramLog",
    "nvrtcGetCUBINSize",
    "nvrtcGetCUBIN",
    "nvrtcDestroyProgram",
];

/// Compiles `source` for `arch` (such as `sm_90`) and returns the CUBIN;
/// each (source, arch) is compiled once per process.
/// Errors: [`GpuError::NoNvrtc`] without libnvrtc, [`GpuError::Compile`]
/// with the compiler log when the source or the architecture is refused.
pub fn compile_cubin(source: &str, arch: &str) -> Result<Vec<u8>, GpuError> {
    static CACHE: OnceLock<CubinCache> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let key = (source.to_string(), arch.to_string());
    if let Some(cubin) = cache.lock().ok().and_then(|map| map.get(&key).cloned()) {
        return Ok(cubin);
    }
    let (cubin, _) = compile_uncached(source, arch, &[])?;
    if let Ok(mut map) = cache.lock() {
        map.insert(key, cubin.clone());
    }
    Ok(cubin)
}

/// Compiles `source` for `arch` with ptxas in verbose mode and returns the
/// compiler log: registers, spills, shared memory and stack of each kernel.
pub fn ptxas_report(source: &str, arch: &str) -> Result<String, GpuError> {
    let (_, log) = compile_uncached(source, arch, &["--ptxas-options=-v"])?;
    Ok(log)
}

/// Compiles without looking at the per-process cache; returns the CUBIN and
/// the compiler log.
fn compile_uncached(
    source: &str,
    arch: &str,
    extra: &[&str],
) -> Result<(Vec<u8>, String), GpuError> {
    if !nvrtc_library_present() {
        return Err(GpuError::NoNvrtc);
    }
    check_symbols()?;
    let source = CString::new(source).map_err(|_| compile_error("source holds a NUL byte"))?;
    let name = CString::new("mmsb_merge.cu").map_err(|_| compile_error("program name"))?;
    let program = result::create_program(&source, Some(&name))
        .map_err(|e| GpuError::nvrtc(e, String::new()))?;
    let outcome = compile_program(program, arch, extra);
    // SAFETY: created above, destroyed once.
    let _ = unsafe { result::destroy_program(program) };
    outcome
}

fn compile_program(
    program: sys::nvrtcProgram,
    arch: &str,
    extra: &[&str],
) -> Result<(Vec<u8>, String), GpuError> {
    let mut options: Vec<String> = BASE_OPTIONS.iter().map(|o| o.to_string()).collect();
    options.push(format!("--gpu-architecture={arch}"));
    options.extend(extra.iter().map(|o| o.to_string()));
    // SAFETY: `program` is alive; options hold no NUL bytes.
    if let Err(error) = unsafe { result::compile_program(program, &options) } {
        return Err(GpuError::nvrtc(error, program_log(program)));
    }
    let mut size = 0usize;
    // SAFETY: `program` compiled successfully.
    unsafe { sys::nvrtcGetCUBINSize(program, &mut size) }
        .result()
        .map_err(|e| GpuError::nvrtc(e, program_log(program)))?;
    if size == 0 {
        return Err(compile_error(&format!(
            "NVRTC produced no CUBIN for {arch} (is it a real architecture?)"
        )));
    }
    let mut cubin = vec![0u8; size];
    // SAFETY: `cubin` has the size NVRTC reported.
    unsafe { sys::nvrtcGetCUBIN(program, cubin.as_mut_ptr().cast::<c_char>()) }
        .result()
        .map_err(|e| GpuError::nvrtc(e, program_log(program)))?;
    Ok((cubin, program_log(program)))
}

fn program_log(program: sys::nvrtcProgram) -> String {
    // SAFETY: `program` is alive.
    match unsafe { result::get_program_log(program) } {
        Ok(raw) => {
            let bytes: Vec<u8> = raw
                .iter()
                .take_while(|&&c| c != 0)
                .map(|&c| c as u8)
                .collect();
            String::from_utf8_lossy(&bytes).into_owned()
        }
        Err(_) => String::new(),
    }
}

fn check_symbols() -> Result<(), GpuError> {
    // SAFETY: the library was found; `get` only looks names up.
    let lib = unsafe { sys::culib() };
    let missing: Vec<&str> = REQUIRED_SYMBOLS
        .iter()
        .copied()
        .filter(|name| unsafe { lib.get::<*const std::ffi::c_void>(name.as_bytes()) }.is_err())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(compile_error(&format!(
            "libnvrtc lacks {}",
            missing.join(", ")
        )))
    }
}

fn compile_error(log: &str) -> GpuError {
    GpuError::Compile {
        status: "NVRTC_ERROR".into(),
        log: log.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Compiles the real kernels when libnvrtc is on the loader path (it needs
    /// no GPU); skips with a reason otherwise.
    #[test]
    fn merge_kernels_compile_for_hopper() {
        if !nvrtc_library_present() {
            eprintln!("skipping: no libnvrtc on the loader path");
            return;
        }
        let cubin = compile_cubin(&crate::kernel::source(), "sm_90").unwrap();
        assert_eq!(&cubin[..4], b"\x7fELF", "a CUBIN is an ELF image");
        let report = ptxas_report(&crate::kernel::source(), "sm_90").unwrap();
        eprintln!("{report}");
        assert!(report.contains(crate::kernel::MERGE_KERNEL), "{report}");
        // Production kernels must not spill; the bench's register-cap
        // variants may (that is what they measure).
        let mut entry = String::new();
        for line in report.lines() {
            if let Some(name) = line
                .split('\'')
                .nth(1)
                .filter(|_| line.contains("Compiling entry"))
            {
                entry = name.to_string();
            }
            if line.contains("spill stores")
                && !crate::kernel::VARIANT_KERNELS.contains(&entry.as_str())
            {
                assert!(
                    line.contains(" 0 bytes spill stores") && line.contains(" 0 bytes spill loads"),
                    "{entry}: {line}"
                );
            }
        }
    }

    #[test]
    fn a_broken_source_yields_the_compiler_log() {
        if !nvrtc_library_present() {
            assert_eq!(compile_cubin("x", "sm_90"), Err(GpuError::NoNvrtc));
            return;
        }
        match compile_cubin(
            "extern \"C\" __global__ void k() { undefined_thing(); }",
            "sm_90",
        ) {
            Err(GpuError::Compile { log, .. }) => assert!(log.contains("undefined_thing"), "{log}"),
            other => panic!("expected a compile error, got {other:?}"),
        }
    }
}
