//! Where an `s3://BUCKET/PREFIX` destination is and who we are there, resolved the way the AWS
//! tools do: `AWS_ENDPOINT_URL_S3`/`AWS_ENDPOINT_URL`, `AWS_REGION`/`AWS_DEFAULT_REGION`,
//! `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`, else `AWS_PROFILE` (or
//! `default`) from `~/.aws/credentials` and `~/.aws/config` (`AWS_SHARED_CREDENTIALS_FILE`,
//! `AWS_CONFIG_FILE`), then wyng's own `--s3-*` options (also config-file keys). The caller
//! reads those variables ([`AwsEnv::NAMES`]) and hands them in: the library never reads the
//! environment.
//!
//! Secrets stay in [`S3Config::credentials`]: nothing here formats them, and the credential's
//! *source* (never its value) is what messages name.

use std::path::PathBuf;

use crate::error::{Error, Result};

/// `--s3-*` options (from the command line or the configuration file).
#[derive(Clone, Debug, Default)]
pub struct S3Options {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub profile: Option<String>,
    /// `path`, `virtual` or `auto` (path-style for a custom endpoint, else virtual-host).
    pub addressing: Option<String>,
    /// The engine ignores conditional writes and the user vouches that one wyng writes at a time.
    pub no_conditional_lock: bool,
    /// Requests in flight at once (uploads and parallel downloads).
    pub parallel: Option<usize>,
    /// How long a request may go without progress (connecting, sending, or waiting for the
    /// engine's answer) before it is abandoned and retried.
    pub stall: Option<std::time::Duration>,
    /// Access key id and secret given by a program embedding wyng (before the environment).
    pub access_key: Option<(String, String)>,
    /// Where the requests and bytes of every destination opened are counted, for the caller
    /// to report.
    pub usage: super::S3UsageLog,
    /// The AWS tools' environment variables, as the caller read them.
    pub env: AwsEnv,
}

/// The environment variables the AWS tools are configured by ([`AwsEnv::NAMES`]), as read by
/// the caller (empty values count as unset).
#[derive(Clone, Debug, Default)]
pub struct AwsEnv(pub std::collections::BTreeMap<String, String>);

impl AwsEnv {
    /// The variables that count (`HOME` finds `~/.aws`).
    pub const NAMES: &[&str] = &[
        "AWS_PROFILE",
        "AWS_SHARED_CREDENTIALS_FILE",
        "AWS_CONFIG_FILE",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ENDPOINT_URL_S3",
        "AWS_ENDPOINT_URL",
        "HOME",
    ];

    fn get(&self, k: &str) -> Option<String> {
        self.0.get(k).filter(|v| !v.is_empty()).cloned()
    }
}

pub struct S3Config {
    pub bucket: String,
    /// The archive's key prefix, without leading or trailing `/` (empty: the bucket root).
    pub prefix: String,
    pub endpoint: url::Url,
    pub region: String,
    pub path_style: bool,
    pub credentials: rusty_s3::Credentials,
    /// Where the credentials came from, for messages ("environment (AWS_ACCESS_KEY_ID)").
    pub credential_source: String,
    pub no_conditional_lock: bool,
    pub parallel: usize,
    pub stall: std::time::Duration,
}

/// Splits `s3://BUCKET[/PREFIX]`.
pub(crate) fn parse_url(url: &str) -> Result<(String, String)> {
    let rest = url.strip_prefix("s3://").ok_or_else(|| Error::BadDest {
        url: url.into(),
        why: "write s3://BUCKET/PREFIX".into(),
    })?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let valid_bucket = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !bucket.starts_with(['-', '.'])
        && !bucket.ends_with(['-', '.']);
    if !valid_bucket {
        return Err(Error::BadDest {
            url: url.into(),
            why: format!(
                "'{bucket}' is not a valid S3 bucket name (3-63 characters: a-z, 0-9, '-', '.')"
            ),
        });
    }
    let prefix = prefix.trim_matches('/');
    if prefix
        .split('/')
        .any(|c| c == ".." || c == "." || c.is_empty())
        && !prefix.is_empty()
    {
        return Err(Error::BadDest {
            url: url.into(),
            why: "the prefix must not contain empty, '.' or '..' parts".into(),
        });
    }
    Ok((bucket.to_string(), prefix.to_string()))
}

fn home_file(env: &AwsEnv, var: &str, name: &str) -> Option<PathBuf> {
    env.get(var).map(PathBuf::from).or_else(|| {
        env.get("HOME")
            .map(|h| PathBuf::from(h).join(".aws").join(name))
    })
}

/// The `[section]` of an AWS ini file, as key/value pairs (missing file or section: empty).
fn section(path: Option<PathBuf>, wanted: &[String]) -> Result<Vec<(String, String)>> {
    let Some(path) = path else {
        return Ok(Vec::new());
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::local_io(&path, "", e)),
    };
    let sections =
        crate::format::ini::parse_configparser(&text).map_err(|e| Error::local(&path, e))?;
    Ok(sections
        .into_iter()
        .find(|(s, _)| wanted.iter().any(|w| w == s.trim()))
        .map(|(_, kv)| kv)
        .unwrap_or_default())
}

fn get(kv: &[(String, String)], key: &str) -> Option<String> {
    kv.iter()
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

impl S3Config {
    pub fn resolve(url: &str, o: &S3Options) -> Result<S3Config> {
        let (bucket, prefix) = parse_url(url)?;
        let env = |k: &str| o.env.get(k);
        let profile = o
            .profile
            .clone()
            .or_else(|| env("AWS_PROFILE"))
            .unwrap_or_else(|| "default".into());
        let creds_file = section(
            home_file(&o.env, "AWS_SHARED_CREDENTIALS_FILE", "credentials"),
            std::slice::from_ref(&profile),
        )?;
        let config_file = section(
            home_file(&o.env, "AWS_CONFIG_FILE", "config"),
            &[format!("profile {profile}"), profile.clone()],
        )?;
        let given = o.access_key.clone().map(|(k, s)| (Some(k), Some(s)));
        let (credentials, credential_source) = match given
            .clone()
            .unwrap_or((env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")))
        {
            (Some(k), Some(s)) if given.is_some() => (
                rusty_s3::Credentials::new(k, s),
                "the program's S3 options".to_string(),
            ),
            (Some(k), Some(s)) => (
                match env("AWS_SESSION_TOKEN") {
                    Some(t) => rusty_s3::Credentials::new_with_token(k, s, t),
                    None => rusty_s3::Credentials::new(k, s),
                },
                "the environment (AWS_ACCESS_KEY_ID)".to_string(),
            ),
            _ => {
                let from = |kv: &[(String, String)], what: &str| {
                    let k = get(kv, "aws_access_key_id")?;
                    let s = get(kv, "aws_secret_access_key")?;
                    let c = match get(kv, "aws_session_token") {
                        Some(t) => rusty_s3::Credentials::new_with_token(k, s, t),
                        None => rusty_s3::Credentials::new(k, s),
                    };
                    Some((c, format!("{what} [{profile}]")))
                };
                from(&creds_file, "~/.aws/credentials")
                    .or_else(|| from(&config_file, "~/.aws/config"))
                    .ok_or_else(|| {
                        Error::Auth(format!(
                            "no S3 credentials for {url}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE with ~/.aws/credentials"
                        ))
                    })?
            }
        };
        let region = o
            .region
            .clone()
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .or_else(|| get(&config_file, "region"))
            .unwrap_or_else(|| "us-east-1".into());
        let custom = o
            .endpoint
            .clone()
            .or_else(|| env("AWS_ENDPOINT_URL_S3"))
            .or_else(|| env("AWS_ENDPOINT_URL"))
            .or_else(|| get(&config_file, "endpoint_url"));
        let endpoint_text = custom
            .clone()
            .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
        let endpoint: url::Url = endpoint_text.parse().map_err(|e| {
            Error::Usage(format!(
                "S3 endpoint '{endpoint_text}' is not a URL ({e}): write e.g. http://127.0.0.1:8333"
            ))
        })?;
        if !matches!(endpoint.scheme(), "http" | "https") || endpoint.host_str().is_none() {
            return Err(Error::Usage(format!(
                "S3 endpoint '{endpoint_text}': use http://HOST[:PORT] or https://HOST[:PORT]"
            )));
        }
        let path_style = match o.addressing.as_deref().unwrap_or("auto") {
            "path" => true,
            "virtual" => false,
            "auto" => custom.is_some() || bucket.contains('.'),
            other => {
                return Err(Error::BadValue {
                    setting: crate::error::Setting::S3Addressing,
                    value: other.into(),
                    expected: "use path, virtual or auto".into(),
                })
            }
        };
        Ok(S3Config {
            bucket,
            prefix,
            endpoint,
            region,
            path_style,
            credentials,
            credential_source,
            no_conditional_lock: o.no_conditional_lock,
            parallel: o.parallel.unwrap_or(16).clamp(1, 256),
            stall: o.stall.unwrap_or(super::STALL),
        })
    }

    /// The object key of a path relative to the archive root.
    pub fn key(&self, rel: &str) -> String {
        let rel = rel.trim_matches('/');
        match (self.prefix.is_empty(), rel.is_empty() || rel == ".") {
            (true, _) => rel.to_string(),
            (false, true) => self.prefix.clone(),
            (false, false) => format!("{}/{rel}", self.prefix),
        }
    }

    /// The key prefix of a directory (`PREFIX/rel/`; the bucket root is "").
    pub(crate) fn dir_prefix(&self, rel: &str) -> String {
        let k = self.key(rel);
        if k.is_empty() {
            k
        } else {
            format!("{k}/")
        }
    }

    /// The redo marker of a directory move in progress (beside the prefix, like the lock).
    pub(crate) fn rename_key(&self) -> String {
        if self.prefix.is_empty() {
            ".wyng-rename".into()
        } else {
            format!("{}.wyng-rename", self.prefix)
        }
    }

    /// The lock object: beside the archive's prefix, so a copy of the prefix never has it.
    pub(crate) fn lock_key(&self) -> String {
        if self.prefix.is_empty() {
            ".wyng-lock".into()
        } else {
            format!("{}.wyng-lock", self.prefix)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_keys() {
        assert_eq!(
            parse_url("s3://backups/laptop/2026").unwrap(),
            ("backups".into(), "laptop/2026".into())
        );
        assert_eq!(parse_url("s3://backups").unwrap().1, "");
        assert_eq!(parse_url("s3://backups/").unwrap().1, "");
        for bad in [
            "s3://",
            "s3://A",
            "s3://ab",
            "s3://x_y/z",
            "s3://bkt/a/../b",
            "s3://bkt/a//b",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
        let mut c = S3Config {
            bucket: "b".into(),
            prefix: "p/q".into(),
            endpoint: "http://127.0.0.1:1".parse().unwrap(),
            region: "r".into(),
            path_style: true,
            credentials: rusty_s3::Credentials::new("k", "s"),
            credential_source: String::new(),
            no_conditional_lock: false,
            parallel: 1,
            stall: super::super::STALL,
        };
        assert_eq!(c.key("archive.ini"), "p/q/archive.ini");
        assert_eq!(c.key(""), "p/q");
        assert_eq!(c.dir_prefix("Vol_1"), "p/q/Vol_1/");
        assert_eq!(c.lock_key(), "p/q.wyng-lock");
        c.prefix.clear();
        assert_eq!(c.key("Vol_1/info"), "Vol_1/info");
        assert_eq!(c.dir_prefix(""), "");
        assert_eq!(c.lock_key(), ".wyng-lock");
    }
}
