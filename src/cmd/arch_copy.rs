//! `wyng arch-copy`.

use clap::Args;

use wyng::archive::{Archive, CipherMode, Compressor};
use wyng::auth::Auth;
use wyng::ops::copy::{CopyOptions, CopyReport, NewCopy, VolumeCopy};
use wyng::{ops, Error, Result};

use super::arch_init::Encrypt;
use super::{date, human, Global};

pub const HELP: &str = "Examples:\n  wyng arch-copy -a --from=file:/mnt/usb/laptop.backup --dest=ssh://backup@server/srv/laptop.backup\n  wyng arch-copy -a --from=ssh://backup@server/srv/laptop.backup --dest=s3://backups/laptop --delete\n  wyng arch-copy vm1.img --session=^monthly --from=file:/mnt/usb/laptop.backup --dest=file:/mnt/usb2/archive\n  wyng arch-copy -a --dry-run --from=file:/mnt/usb/laptop.backup --dest=s3://backups/laptop\n\nThe first run creates the copy (with the source's chunk size, encryption and compression,\nunless --encrypt or --compression say otherwise) and copies every session; later runs copy only\nthe sessions the copy does not have yet, each costing what it changed. Chunks are verified\nbefore they are written; encrypted ones are sealed with the copy's own keys (the copy is an\nindependent archive: you can send to it, and to the source, safely). A prune on the source\nmoves no data: without --delete the copy keeps the sessions the source removed, with --delete\nit removes them too (by merging, as prune does). An interrupted copy leaves the copy as it was;\nrun it again to continue where it stopped.\n\nPassphrases: the source's from --passcmd (or the prompt / standard input), the copy's from\n--dest-passcmd, else the same as the source's.";

fn compression(s: &str) -> Result<Compressor, String> {
    ops::arch_init::parse_compression(s).map_err(|e| e.to_string())
}

#[derive(Args, Debug)]
pub struct CopyArgs {
    /// Volumes to copy
    pub volumes: Vec<String>,
    /// Copy every volume of the source (except --volex ones)
    #[arg(short, long)]
    pub all: bool,
    /// The archive to copy from (a URL, as for --dest)
    #[arg(long, value_name = "URL")]
    pub from: String,
    /// Which sessions: DATE, ^TAG, a range FROM,TO (dates and/or ^tags), or newest; default
    /// all of them
    #[arg(long, value_name = "WHEN")]
    pub session: Option<String>,
    /// Remove from the copy the sessions the source no longer has (and with --all, volumes)
    #[arg(long)]
    pub delete: bool,
    /// Only show what would be copied (chunks and bytes, at most) and removed
    #[arg(long)]
    pub dry_run: bool,
    /// A new copy's encryption (default: the source's)
    #[arg(long, value_enum, value_name = "MODE")]
    pub encrypt: Option<Encrypt>,
    /// A new copy's compression: zstd[:1..22], zlib[:0..9], bz2[:1..9] (default: the
    /// source's; another method recompresses every chunk)
    #[arg(long, value_name = "TYPE[:LEVEL]", value_parser = compression)]
    pub compression: Option<Compressor>,
    /// Shell command printing the copy's passphrase (default: the source's --passcmd)
    #[arg(long, value_name = "CMD")]
    pub dest_passcmd: Option<String>,
}

pub fn run(g: &Global, a: CopyArgs) -> Result<()> {
    let dest = g.location()?;
    if dest.url() == a.from {
        return Err(Error::Usage(
            "--from and --dest name the same archive".into(),
        ));
    }
    let auth = g.auth();
    let src = Archive::open_read(g.location_of(&a.from)?, &g.open_options(&auth, true))?;
    let names = g.selection(&src, &a.volumes, a.all)?;
    let dest_auth = Auth {
        passcmd: a.dest_passcmd.clone().or_else(|| g.passcmd.clone()),
        authmin: g.authmin,
        cached_only: false,
    };
    let o = CopyOptions {
        volumes: names,
        all: a.all,
        volex: g.volex.clone(),
        session: a.session.clone(),
        now: super::now(),
        delete: a.delete,
        checkpoint_bytes: None,
    };
    let new = NewCopy {
        cipher: a.encrypt.map(|e| match e {
            Encrypt::Dgr => Some(CipherMode::Dgr),
            Encrypt::Msr => Some(CipherMode::Msr),
            Encrypt::Ct => Some(CipherMode::Ct),
            Encrypt::Off => None,
        }),
        compression: a.compression,
    };
    let settings_given = a.encrypt.is_some() || a.compression.is_some();
    let oo = g.open_options(&dest_auth, false);
    let (report, created) = if a.dry_run {
        let copy = match Archive::open_read(dest, &oo) {
            Ok(c) => Some(c),
            Err(Error::ArchiveNotFound { .. }) => None,
            Err(e) => return Err(e),
        };
        refuse_settings(settings_given, copy.is_some(), g)?;
        let mut r = ops::copy::plan(&src, copy.as_ref(), &o)?;
        r.dest = g.dest_url().to_string();
        (r, copy.is_none())
    } else {
        let (mut wa, created) = match Archive::open_write(dest, &oo) {
            Ok(w) => (w, false),
            Err(Error::ArchiveNotFound { .. }) => {
                let loc = g.location()?;
                let w = ops::copy::new_copy(loc, &src, &new, &dest_auth, Some(g.meta_dir()))?;
                (w, true)
            }
            Err(e) => return Err(e),
        };
        refuse_settings(settings_given, !created, g)?;
        let mut r = ops::copy::run(&src, &mut wa, &o)?;
        if created {
            // What creating it wrote counts too.
            r.bytes_written = wa.bytes_written();
        }
        (r, created)
    };
    print(g, &report, created)?;
    let mut failed: Vec<(String, Error)> = report
        .volumes
        .iter()
        .filter_map(|v| {
            v.error
                .as_ref()
                .map(|e| (v.volume.clone(), Error::corrupt(&v.volume, e.clone())))
        })
        .collect();
    if a.all {
        // A damaged volume of the source is part of "all": not copied, and said so.
        for d in src
            .damaged()
            .iter()
            .filter(|d| d.name.as_ref().is_none_or(|n| !g.volex.contains(n)))
        {
            let name = d.name.clone().unwrap_or_else(|| d.vid.to_string());
            eprintln!(
                "wyng: error: {}: damaged in the source, not copied: {}",
                wyng::archive::sanitized(&name),
                d.error
            );
            failed.push((name, Error::corrupt(d.vid.as_str(), d.error.clone())));
        }
    }
    super::volumes_failed("arch-copy", &failed)
}

fn refuse_settings(given: bool, exists: bool, g: &Global) -> Result<()> {
    if given && exists {
        return Err(Error::Usage(format!(
            "--encrypt and --compression choose a new copy's settings, but {} already exists",
            g.dest_url()
        )));
    }
    Ok(())
}

fn print(g: &Global, r: &CopyReport, created: bool) -> Result<()> {
    for v in &r.volumes {
        if let Some(e) = &v.error {
            eprintln!(
                "wyng: error: {}: {}",
                wyng::archive::sanitized(&v.volume),
                wyng::archive::printable(e)
            );
        }
    }
    if g.json {
        return g.json(r);
    }
    if created && !r.dry_run {
        g.say(format!("Created the copy {} ({}).", r.dest, r.transfer));
    }
    for v in &r.volumes {
        for l in volume_lines(v, r.dry_run) {
            g.say(l);
        }
    }
    for n in &r.volumes_removed {
        g.say(format!(
            "{n}: {} from the copy (the source no longer has it).",
            if r.dry_run {
                "would be deleted"
            } else {
                "deleted"
            }
        ));
    }
    let copied: usize = r.volumes.iter().map(|v| v.sessions.len()).sum();
    if r.dry_run {
        g.say(format!(
            "Would copy {}: at most {} chunks, {} of data.",
            super::count(copied as u64, "session", "sessions"),
            r.chunks_copied,
            human(r.data_bytes)
        ));
    } else {
        g.say(format!(
            "Copied {}: {} chunks, {} stored ({} reused); {} written to {}.",
            super::count(copied as u64, "session", "sessions"),
            r.chunks_copied,
            human(r.bytes_stored),
            r.chunks_reused,
            human(r.bytes_written),
            r.dest
        ));
    }
    Ok(())
}

fn volume_lines(v: &VolumeCopy, dry: bool) -> Vec<String> {
    let mut out = Vec::new();
    let name = &v.volume;
    if let Some(old) = &v.renamed_from {
        out.push(format!("{name}: renamed from {old} in the copy."));
    } else if v.created {
        out.push(format!("{name}: new in the copy."));
    }
    for s in &v.sessions {
        out.push(if dry {
            format!(
                "{name}: would copy session {}: at most {} chunks ({}).",
                date(&s.session),
                s.chunks_copied,
                human(s.data_bytes)
            )
        } else {
            format!(
                "{name}: session {} copied: {} chunks, {} stored{}.",
                date(&s.session),
                s.chunks_copied,
                human(s.bytes_stored),
                if s.chunks_reused > 0 {
                    format!(", {} taken from the interrupted copy", s.chunks_reused)
                } else {
                    String::new()
                }
            )
        });
    }
    let list = |v: &[String]| v.iter().map(|s| date(s)).collect::<Vec<_>>().join(" ");
    if !v.skipped.is_empty() {
        out.push(format!(
            "{name}: not copied (older than the copy's newest session): {}",
            list(&v.skipped)
        ));
    }
    if !v.removed.is_empty() {
        out.push(format!(
            "{name}: {} (the source no longer has them): {}",
            if dry { "would remove" } else { "removed" },
            list(&v.removed)
        ));
    }
    if !v.kept.is_empty() {
        out.push(format!(
            "{name}: kept, not in the source (--delete removes them): {}",
            list(&v.kept)
        ));
    }
    if v.sessions.is_empty() && out.is_empty() && v.error.is_none() {
        out.push(format!("{name}: up to date."));
    }
    out
}
