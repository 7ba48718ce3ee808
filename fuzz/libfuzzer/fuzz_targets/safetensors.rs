#![no_main]
use calm_fuzz::targets::Target;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Target::Safetensors.run_in_scratch(data);
});
