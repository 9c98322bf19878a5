//! Writes the seed corpus of every fuzz target (`scripts/fuzz.sh` runs it first):
//! `fuzzseeds FIXTURES_DIR OUT_DIR` makes `OUT_DIR/<target>/seed-<n>`.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, fixtures, out] = &args[..] else {
        eprintln!("usage: fuzzseeds FIXTURES_DIR OUT_DIR");
        std::process::exit(2);
    };
    for t in wyng::fuzz::TARGETS {
        let dir = std::path::Path::new(out).join(t.name);
        std::fs::create_dir_all(&dir).expect("corpus directory");
        let seeds = wyng::fuzz::seeds(t, std::path::Path::new(fixtures));
        for (i, s) in seeds.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), s).expect("seed file");
        }
        println!("{}: {} seeds", t.name, seeds.len());
    }
}
