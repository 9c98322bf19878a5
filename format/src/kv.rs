//! The `key = value` line format of volinfo and info (format §4.1): split at the first `=`,
//! strip both sides; unknown keys are the caller's to ignore.

pub fn parse_kv(text: &str) -> Result<Vec<(&str, &str)>, String> {
    let mut out = Vec::new();
    for (n, line) in text.split('\n').enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| format!("line {}: not a key = value line", n + 1))?;
        out.push((k.trim(), v.trim()));
    }
    Ok(out)
}
