//! libFuzzer entry of the `sealed_page_and_btree_node` target (see fuzz/README.md).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| mmsb_fuzz_targets::sealed_page_and_btree_node(data));
