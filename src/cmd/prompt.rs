//! Questions on the terminal. Without a terminal there is nobody to ask: the answer is no,
//! with a message saying how to say yes (`-u`).

use std::io::{BufRead, IsTerminal, Write};

use wyng::{Error, Result};

/// Asks a yes/no question on the terminal; anything but yes cancels.
pub fn confirm(question: &str) -> Result<()> {
    if !std::io::stdin().is_terminal() {
        return Err(Error::Usage(format!(
            "{question} Add -u to confirm when not on a terminal."
        )));
    }
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut a = String::new();
    let _ = std::io::stdin().lock().read_line(&mut a);
    if matches!(a.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(Error::Usage("cancelled; nothing was changed".into()))
    }
}
