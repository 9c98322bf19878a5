//! `list`: volumes, sessions and tags, as text (laid out like the original's plain listing) or
//! as JSON (the original's `list --json` schema, without the banner lines, so scripts can parse
//! stdout directly).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::archive::sanitized;
use crate::archive::{Archive, Volume};
use crate::error::Result;
use crate::ops::SessionSel;

#[derive(Serialize)]
pub struct ListJson {
    pub wversion: String,
    pub fver: u32,
    pub wdate: String,
    pub uuid: String,
    pub updated_at: String,
    pub encrypted: bool,
    pub is_auth: bool,
    pub url: String,
    pub volumes: BTreeMap<String, VolumeJson>,
    /// Volumes the archive lists but whose metadata cannot be loaded (not in the original's
    /// schema, which has no such state; absent when there are none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub damaged: Vec<DamagedJson>,
}

#[derive(Serialize)]
pub struct DamagedJson {
    pub vid: String,
    pub name: Option<String>,
    pub error: String,
    pub repairable: bool,
}

#[derive(Serialize)]
pub struct VolumeJson {
    pub vid: String,
    pub desc: String,
    pub last: Option<String>,
    pub ts: Option<i128>,
    pub sessions: BTreeMap<String, SessionJson>,
}

#[derive(Serialize)]
pub struct SessionJson {
    pub volsize: u64,
    pub sequence: u64,
    pub ts: i128,
    pub chg: bool,
    pub tags: BTreeMap<String, String>,
}

/// Whether a session changed anything: the original's `Chg` flag.
pub(crate) fn session_changed(vol: &Volume, idx: usize) -> bool {
    let s = &vol.sessions[idx].info;
    idx == 0 || s.manifest_hash.is_some() || {
        let p = &vol.sessions[idx - 1].info;
        p.volsize != s.volsize || p.permissions != s.permissions
    }
}

fn selected<'a>(archive: &'a Archive, names: &[String]) -> Result<Vec<&'a Volume>> {
    if names.is_empty() {
        return Ok(archive.volumes().iter().collect());
    }
    names.iter().map(|n| archive.find(n)).collect()
}

pub fn json(archive: &Archive, names: &[String]) -> Result<ListJson> {
    let mut volumes = BTreeMap::new();
    let mut damaged: Vec<DamagedJson> = Vec::new();
    for v in selected(archive, names)? {
        if archive.volume_index(v.name()).is_none() {
            // A name two volumes share cannot key the map: both are listed as unusable by
            // name instead of one hiding the other.
            damaged.push(DamagedJson {
                vid: v.vid.to_string(),
                name: Some(v.name().to_string()),
                error: "its name is used by another volume too: rename or delete one by its id"
                    .into(),
                repairable: false,
            });
            continue;
        }
        let sessions = v
            .sessions
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let js = SessionJson {
                    volsize: s.info.volsize,
                    sequence: s.info.sequence,
                    ts: s.info.localtime,
                    chg: session_changed(v, i),
                    tags: s
                        .info
                        .tags
                        .iter()
                        .map(|t| (t.id.clone(), t.desc.clone()))
                        .collect(),
                };
                (s.name.to_string(), js)
            })
            .collect();
        volumes.insert(
            v.name().to_string(),
            VolumeJson {
                vid: v.vid.to_string(),
                desc: v.volinfo.desc.clone(),
                last: v.last().map(|s| s.name.to_string()),
                ts: v.last().map(|s| s.info.localtime),
                sessions,
            },
        );
    }
    Ok(ListJson {
        wversion: env!("CARGO_PKG_VERSION").into(),
        fver: 3,
        wdate: crate::format::RELEASE_DATE.into(),
        uuid: archive.uuid().into(),
        updated_at: archive
            .settings()
            .iter()
            .find(|(k, _)| k == "updated_at")
            .map_or(String::new(), |(_, v)| v.clone()),
        encrypted: archive.encrypted(),
        // As the original: an encrypted archive's metadata was authenticated by its keys.
        is_auth: archive.encrypted(),
        url: archive.url().into(),
        volumes,
        damaged: damaged
            .into_iter()
            .chain(archive.damaged().iter().map(|d| DamagedJson {
                vid: d.vid.to_string(),
                name: d.name.clone(),
                error: d.error.clone(),
                repairable: d.repairable,
            }))
            .collect(),
    })
}

pub struct TextOptions {
    pub verbose: bool,
    /// Only volumes that have this session (`--session` without volume names).
    pub session: Option<SessionSel>,
}

/// The two lines every listing starts with (archive kind and URL, last update), and a blank.
pub fn header(archive: &Archive) -> String {
    let mut out = String::new();
    let updated = archive
        .updated_at()
        .and_then(|t| chrono::DateTime::from_timestamp(t as i64, ((t.fract()) * 1e9) as u32))
        .map(|t| {
            t.with_timezone(&chrono::Local)
                .format("%Y-%m-%d %H:%M:%S%.6f (%:z)")
                .to_string()
        })
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "{} archive '{}'",
        if !archive.encrypted() {
            "Un-encrypted"
        } else {
            "Encrypted"
        },
        archive.url()
    );
    let _ = writeln!(out, "Last updated {updated}\n");
    out
}

pub fn text(archive: &Archive, names: &[String], o: &TextOptions) -> Result<String> {
    let mut out = header(archive);
    if o.verbose {
        out.push_str("Archive Properties:\n");
        for (k, v) in archive.settings() {
            if k == "ci_mode" {
                // The original names the cipher (data and metadata) before its mode number.
                let cipher = match archive.cipher_names() {
                    Some((data, meta)) => format!("{data} ({meta})"),
                    None => "off ".to_string(),
                };
                let _ = writeln!(out, " {:<15} = {cipher}", "cipher");
            }
            let _ = writeln!(out, " {k:<15} = {v}");
        }
        out.push('\n');
    }
    let vols = selected(archive, names)?;
    if names.is_empty() {
        out.push_str("Volumes:\n");
        let width = vols
            .iter()
            .map(|v| v.name().chars().count())
            .max()
            .unwrap_or(0);
        for v in vols {
            if let Some(sel) = &o.session {
                if sel.select(v).is_err() {
                    continue;
                }
            }
            if o.verbose {
                let size = v.last().map_or(0, |s| s.info.volsize);
                let last = v
                    .last()
                    .map_or("none".to_string(), |s| s.name.date().to_string());
                let _ = writeln!(
                    out,
                    " {:>6.2} GB  {}  {:<width$}  {last} ({:>3})",
                    size as f64 / (1u64 << 30) as f64,
                    v.vid,
                    v.name(),
                    v.sessions.len()
                );
                if !v.volinfo.desc.is_empty() {
                    let _ = writeln!(out, "            {}", v.volinfo.desc);
                }
            } else if archive.volume_index(v.name()).is_none() {
                let _ = writeln!(
                    out,
                    " {}  ({}: the name is used by another volume too; rename or delete one by its id)",
                    sanitized(v.name()),
                    v.vid
                );
            } else {
                let _ = writeln!(out, " {}", sanitized(v.name()));
            }
        }
        for d in archive.damaged() {
            let name = d.name.as_deref().map_or("?".to_string(), sanitized);
            let _ = writeln!(
                out,
                " {name}  DAMAGED ({}): {}; see `wyng arch-check`",
                d.vid, d.error
            );
        }
        return Ok(out);
    }
    for v in vols {
        let _ = writeln!(out, "Sessions for volume '{}':\n", v.name());
        for (i, s) in v.sessions.iter().enumerate() {
            let chg = if session_changed(v, i) { " Chg" } else { "" };
            if o.verbose {
                let _ = writeln!(out, "{} ({} bytes){chg}", s.name.date(), s.info.volsize);
                for t in &s.info.tags {
                    if t.desc.is_empty() {
                        let _ = writeln!(out, " tag: {}", t.id);
                    } else {
                        let _ = writeln!(out, " tag: {}, {}", t.id, t.desc);
                    }
                }
            } else {
                let _ = writeln!(out, "{} {chg}", s.name.date());
            }
        }
        out.push('\n');
    }
    Ok(out)
}

/// One row of the tag view (`list --tag`).
#[derive(Serialize)]
pub struct TagRow {
    pub tag: String,
    pub volume: String,
    pub session: String,
    pub desc: String,
}

/// Every tag (or only `only`, unless empty) of the named volumes (none: all), by tag, then
/// volume, then session.
pub fn tags(archive: &Archive, names: &[String], only: &str) -> Result<Vec<TagRow>> {
    let mut rows = Vec::new();
    for v in selected(archive, names)? {
        for s in &v.sessions {
            for t in &s.info.tags {
                if only.is_empty() || t.id == only.trim_start_matches('^') {
                    rows.push(TagRow {
                        tag: t.id.clone(),
                        volume: v.name().to_string(),
                        session: s.name.to_string(),
                        desc: t.desc.clone(),
                    });
                }
            }
        }
    }
    rows.sort_by(|a, b| (&a.tag, &a.volume, &a.session).cmp(&(&b.tag, &b.volume, &b.session)));
    Ok(rows)
}

/// The tag view as the original prints it: each tag, then its sessions as
/// `('volume', 'date-time', 'description')`.
pub fn tags_text(archive: &Archive, rows: &[TagRow]) -> String {
    let mut out = header(archive);
    out.push_str("Tag Assignments\n");
    let mut last: Option<&str> = None;
    for r in rows {
        if last != Some(r.tag.as_str()) {
            let _ = write!(out, "\n{}:\n", r.tag);
            last = Some(&r.tag);
        }
        let date = r.session.strip_prefix("S_").unwrap_or(&r.session);
        let _ = writeln!(
            out,
            "  ({}, {}, {})",
            py_repr(&r.volume),
            py_repr(date),
            py_repr(&r.desc)
        );
    }
    out
}

/// A string as Python's `repr` shows it (the original prints tuples): single quotes unless
/// the text has one and no double quote; backslashes and the quote escaped.
fn py_repr(s: &str) -> String {
    let q = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::from(q);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            c if c == q => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out.push(q);
    out
}
