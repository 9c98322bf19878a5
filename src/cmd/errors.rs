//! Library errors as users read them: the typed usage and selection cases name the option
//! that gives the value, and errors whose way out is an option name it (for these the library
//! describes the thing, not the flag; some older `Error::Usage` texts of the library still
//! name their option themselves).

use wyng::error::Setting;
use wyng::Error;

/// The text of `e` for the user (stderr, `--json`'s `message`, per-volume report lines).
pub fn message(e: &Error) -> String {
    match e {
        Error::BadDest { url, why } => format!("--dest '{url}': {why}"),
        Error::BadSessionSpec { spec, why } => format!("--session '{spec}': {why}"),
        Error::Passcmd(what) => format!("--passcmd {what}"),
        Error::NoPassphrase => "could not authenticate archive: no passphrase given: type it at the prompt, pipe it on standard input, or use --passcmd".into(),
        Error::NothingToDelete => "name the volume to delete, or give --vid (or use --clean)".into(),
        Error::SkipNeedsFullReceive => "--skip-corrupt-chunks works with a full receive, not with --sparse or --sparse-write".into(),
        Error::NothingToPrune => "prune needs --session=DATE|^TAG|FROM,TO, a retention policy such as --keep-daily=7, or --autoprune=on|full".into(),
        Error::NoSessionMatches { spec, of } => {
            format!("--session={spec} matches no session of {of}")
        }
        Error::BadValue {
            setting,
            value,
            expected,
        } => match setting {
            Setting::AutopruneDays => format!("--apdays '{value}': {expected}"),
            Setting::ChunkFactor => format!("--chunk-factor {value} is {expected}"),
            Setting::S3Addressing => format!("--s3-addressing '{value}': {expected}"),
            Setting::LocalStorage => format!("--local '{value}': {expected}"),
        },
        Error::ArchiveNotFound { url } => format!(
            "no Wyng archive at '{url}': check --dest, or create one with `wyng arch-init --dest={url}`"
        ),
        Error::ArchiveExists { url } => format!(
            "an archive already exists at '{url}': choose another --dest, or remove the old archive first"
        ),
        Error::Busy { url } => format!(
            "another wyng process is using the archive '{url}'; wait for it to finish, or let this command wait with --lock-wait=SECONDS"
        ),
        Error::Rollback { url } => format!(
            "archive is older than the last one seen here: '{url}' may have been replaced by an old copy of itself; check it, then use --force-allow-rollback to accept it"
        ),
        Error::RetryPending { command, vid } => format!(
            "an interrupted {command} of {vid} was already retried and did not complete: see why in the earlier error (or run `wyng arch-check`), then run again with --force-retry to retry it once more"
        ),
        Error::CountersNotReserved => "encryption counters were not reserved in local state; nothing was written (an encrypted archive can only be written with a usable --meta-dir)".into(),
        e => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_usage_errors_name_their_option_with_the_same_exit_code_and_kind() {
        let cases = [
            (
                Error::BadDest {
                    url: "ftp://x".into(),
                    why: "not a destination URL".into(),
                },
                "--dest 'ftp://x': not a destination URL",
                9,
                "usage",
            ),
            (
                Error::NoSessionMatches {
                    spec: "^nope".into(),
                    of: "volume 'a'".into(),
                },
                "--session=^nope matches no session of volume 'a'",
                2,
                "selection",
            ),
            (
                Error::BadValue {
                    setting: Setting::ChunkFactor,
                    value: "9".into(),
                    expected: "out of range: 1 (64 KiB chunks) to 6 (2 MiB)".into(),
                },
                "--chunk-factor 9 is out of range: 1 (64 KiB chunks) to 6 (2 MiB)",
                9,
                "usage",
            ),
        ];
        for (e, text, code, kind) in cases {
            assert_eq!(message(&e), text);
            assert!(!e.to_string().contains("--"), "{e}");
            assert_eq!((e.exit_code(), e.kind()), (code, kind));
        }
    }
}
