//! libFuzzer entry of the `tlog_frames` target (see fuzz/README.md).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| mmsb_fuzz_targets::tlog_frames(data));
