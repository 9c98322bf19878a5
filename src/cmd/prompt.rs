//! Questions on the terminal. Callers decide first whether anybody can be asked
//! ([`super::Global::unattended`]); without a terminal these refuse, saying how to answer.

use std::io::{BufRead, IsTerminal, Write};

use wyng::{Error, Result};

/// Asks a yes/no question on the terminal: whether the answer was yes.
pub fn confirm(question: &str) -> Result<bool> {
    if !std::io::stdin().is_terminal() {
        return Err(Error::Usage(format!(
            "{question} Add -u to confirm when not on a terminal."
        )));
    }
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut a = String::new();
    let _ = std::io::stdin().lock().read_line(&mut a);
    Ok(matches!(a.trim(), "y" | "Y" | "yes" | "Yes" | "YES"))
}

/// Reads one line typed on the terminal after `question`.
pub fn ask(question: &str) -> Result<String> {
    if !std::io::stdin().is_terminal() {
        return Err(Error::Usage(format!(
            "{question}: nobody to ask without a terminal"
        )));
    }
    eprint!("{question} ");
    let _ = std::io::stderr().flush();
    let mut a = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut a)
        .map_err(|e| Error::io("stdin", e))?;
    Ok(a)
}
