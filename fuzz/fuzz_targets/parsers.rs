//! One libFuzzer binary for every target of `wyng::fuzz`; `WYNG_FUZZ_TARGET` names the one
//! to run (`scripts/fuzz.sh` runs them all in turn).
#![no_main]

use std::sync::OnceLock;

static TARGET: OnceLock<&'static wyng::fuzz::Target> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let t = TARGET.get_or_init(|| {
        let name = std::env::var("WYNG_FUZZ_TARGET").unwrap_or_default();
        wyng::fuzz::target(&name).unwrap_or_else(|| {
            let names: Vec<&str> = wyng::fuzz::TARGETS.iter().map(|t| t.name).collect();
            panic!("set WYNG_FUZZ_TARGET to one of {}", names.join(", "))
        })
    });
    (t.run)(data);
});
