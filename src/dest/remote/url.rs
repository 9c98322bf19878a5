//! Remote destination URLs and how their commands are run: `ssh://[user@]host[:port][/path]`,
//! `qubes://vm[/path]` and `qubes-ssh://vm:[user@]host[:port][/path]` (behaviour notes §4.1).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result};

/// Single-quotes a word for a POSIX shell (only where it needs it).
pub(crate) fn sh_quote(s: &str) -> String {
    // Paths and commands never hold NUL (URLs with control characters are refused earlier).
    shlex::try_quote(s)
        .map(|q| q.into_owned())
        .unwrap_or_else(|_| format!("'{}'", s.replace('\'', "'\\''")))
}

/// qvm-run's options when `--opt-qubes` gives none: the original's list.
pub(crate) const QUBES_DEFAULT_OPTS: [&str; 4] = [
    "--no-color-stderr",
    "--no-color-output",
    "--nogui",
    "--no-filter-escape-chars",
];

/// How remote commands are run.
#[derive(Clone, Debug)]
pub enum Transport {
    Ssh {
        target: String,
        port: Option<u16>,
        opts: Vec<String>,
        control: PathBuf,
    },
    Qubes {
        vm: String,
        /// `--opt-qubes` (before the VM name).
        opts: Vec<String>,
        ssh: Option<Box<Transport>>,
    },
}

/// The ssh options used unless `--opt-ssh` replaces them.
pub fn default_ssh_opts() -> Vec<String> {
    [
        "-o",
        "ServerAliveInterval=15",
        "-o",
        "ServerAliveCountMax=4",
        "-o",
        "Compression=no",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

impl Transport {
    /// Parses a remote URL into its transport and the archive path on the remote side (`.`,
    /// the login directory, when the URL names none, as the original does).
    pub fn parse(
        url: &str,
        o: &crate::dest::DestOptions,
        control_dir: &Path,
    ) -> Result<(Transport, String)> {
        let ssh_opts = &o.ssh_opts;
        // The original's qvm-run options unless --opt-qubes replaces them (behaviour §4).
        let qubes_opts = o
            .qubes_opts
            .clone()
            .unwrap_or_else(|| QUBES_DEFAULT_OPTS.iter().map(|s| s.to_string()).collect());
        let bad = |why: &str| Error::BadDest {
            url: url.into(),
            why: why.into(),
        };
        let ssh = |netloc: &str| -> Result<Transport> {
            let (userhost, port) = match netloc.rsplit_once(':') {
                Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                    (h, Some(p.parse::<u16>().map_err(|_| bad("bad port"))?))
                }
                _ => (netloc, None),
            };
            if userhost.is_empty() || userhost.ends_with('@') || userhost.starts_with('-') {
                return Err(bad("no host; write ssh://user@host[:port]/path"));
            }
            Ok(Transport::Ssh {
                target: userhost.to_string(),
                port,
                opts: ssh_opts.clone().unwrap_or_else(default_ssh_opts),
                control: control_dir.join("cm-%C"),
            })
        };
        let split = |rest: &str| -> (String, String) {
            match rest.split_once('/') {
                Some((n, p)) => (n.to_string(), format!("/{p}")),
                None => (rest.to_string(), String::new()),
            }
        };
        let (transport, path) = if let Some(rest) = url.strip_prefix("ssh://") {
            let (netloc, path) = split(rest);
            (ssh(&netloc)?, path)
        } else if let Some(rest) = url.strip_prefix("qubes-ssh://") {
            let (netloc, path) = split(rest);
            let (vm, hostpart) = netloc
                .split_once(':')
                .filter(|(v, h)| !v.is_empty() && !h.is_empty())
                .ok_or_else(|| bad("write qubes-ssh://vm:user@host[:port]/path"))?;
            (
                Transport::Qubes {
                    vm: vm.into(),
                    opts: qubes_opts.clone(),
                    ssh: Some(Box::new(ssh(hostpart)?)),
                },
                path,
            )
        } else if let Some(rest) = url.strip_prefix("qubes://") {
            let (vm, path) = split(rest);
            if vm.is_empty() || vm.starts_with('-') {
                return Err(bad("no VM name; write qubes://vm/path"));
            }
            (
                Transport::Qubes {
                    vm,
                    opts: qubes_opts.clone(),
                    ssh: None,
                },
                path,
            )
        } else {
            return Err(bad("not a remote URL"));
        };
        let root = if path.is_empty() {
            ".".to_string()
        } else {
            path
        };
        Ok((transport, root))
    }

    /// The program that carries commands (for messages).
    pub(crate) fn program(&self) -> &'static str {
        match self {
            Transport::Ssh { .. } => "ssh",
            Transport::Qubes { .. } => "qvm-run",
        }
    }

    /// A command that runs `script` with `sh` on the remote side.
    pub fn command(&self, script: &str) -> Command {
        match self {
            Transport::Ssh {
                target,
                port,
                opts,
                control,
            } => {
                let mut c = Command::new("ssh");
                c.arg("-o")
                    .arg(format!("ControlPath={}", control.display()));
                c.args([
                    "-o",
                    "ControlMaster=auto",
                    "-o",
                    "ControlPersist=30",
                    "-o",
                    "BatchMode=yes",
                ]);
                if let Some(p) = port {
                    c.arg("-p").arg(p.to_string());
                }
                c.args(opts)
                    .arg("--")
                    .arg(target)
                    .arg(format!("sh -c {}", sh_quote(script)));
                c
            }
            Transport::Qubes { vm, opts, ssh } => {
                let inner = match ssh {
                    None => format!("sh -c {}", sh_quote(script)),
                    Some(t) => {
                        let c = t.command(script);
                        let mut words = vec![c.get_program().to_string_lossy().into_owned()];
                        words.extend(c.get_args().map(|a| sh_quote(&a.to_string_lossy())));
                        words.join(" ")
                    }
                };
                let mut c = Command::new("qvm-run");
                c.args(opts).arg("-p").arg(vm).arg(inner);
                c
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let cd = Path::new("/tmp");
        let (t, root) =
            Transport::parse("ssh://backup@nas.local:2222/srv/b", &Default::default(), cd).unwrap();
        match &t {
            Transport::Ssh { target, port, .. } => {
                assert_eq!(target, "backup@nas.local");
                assert_eq!(*port, Some(2222));
            }
            _ => panic!(),
        }
        assert_eq!(root, "/srv/b");
        assert_eq!(
            Transport::parse("ssh://host", &Default::default(), cd)
                .unwrap()
                .1,
            "."
        );
        assert!(Transport::parse("ssh:///x", &Default::default(), cd).is_err());
        assert!(Transport::parse("ssh://-oProxyCommand=x/y", &Default::default(), cd).is_err());
        assert!(Transport::parse("qubes://", &Default::default(), cd).is_err());
        assert!(Transport::parse("qubes-ssh://vm/x", &Default::default(), cd).is_err());
        assert!(Transport::parse("qubes-ssh://vm:me@h:22/x", &Default::default(), cd).is_ok());
        // --opt-qubes replaces the defaults, before -p (the protocol needs it, always) and the VM.
        let (t, _) = Transport::parse("qubes://backupvm/srv", &Default::default(), cd).unwrap();
        let args: Vec<String> = t
            .command("true")
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(args[..4], QUBES_DEFAULT_OPTS);
        assert_eq!(args[4..6], ["-p", "backupvm"]);
        let o = crate::dest::DestOptions {
            qubes_opts: Some(vec!["--no-autostart".into()]),
            ..Default::default()
        };
        let (t, _) = Transport::parse("qubes://backupvm/srv", &o, cd).unwrap();
        let args: Vec<String> = t
            .command("true")
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(args[..3], ["--no-autostart", "-p", "backupvm"]);
        // Quoted so the shell reads back the same word.
        for w in ["a'b", "x y", "$(rm)", "plain/path"] {
            assert_eq!(shlex::split(&sh_quote(w)).unwrap(), vec![w.to_string()]);
        }
    }
}
