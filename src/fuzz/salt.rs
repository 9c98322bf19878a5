//! The salt file (`archive.salt`), as stored and inverted.

use super::Target;

pub(super) const TARGET: Target = Target {
    name: "salt",
    run,
    seed_files: &["archive.salt"],
    builtin_seeds: &[],
};

fn run(data: &[u8]) {
    for b in [data.to_vec(), crate::crypto::SaltFile::inverted(data)] {
        if let Ok(s) = crate::crypto::SaltFile::parse(&b) {
            let again = crate::crypto::SaltFile::parse(&s.to_bytes()).expect("re-parses");
            assert_eq!(again.to_bytes(), s.to_bytes(), "salt round trip");
        }
    }
}
