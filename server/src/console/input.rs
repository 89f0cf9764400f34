//! What the console reads locally: secrets from a file or stdin and
//! confirmations (both before it connects, so a bad one costs no
//! connection), and times given on the command line.

use std::io::BufRead;
use std::path::Path;

use tandem_client::output::timefmt::TypedTime;

use super::AdminError;

/// The first line of `file`, or of stdin without one; an empty one is refused.
pub(super) fn read_secret(file: Option<&Path>, what: &str) -> Result<String, AdminError> {
    let text = match file {
        Some(f) => std::fs::read_to_string(f).map_err(|e| {
            AdminError::Usage(format!("cannot read {what} file {}: {e}", f.display()))
        })?,
        None => {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .map_err(|e| AdminError::Usage(format!("cannot read {what} from stdin: {e}")))?;
            line
        }
    };
    let first = text.lines().next().unwrap_or("").to_string();
    if first.is_empty() {
        return Err(AdminError::Usage(format!(
            "{what} is empty: give it on stdin or with --password-file"
        )));
    }
    Ok(first)
}

/// Asks on the terminal; refuses when stdin is not a terminal.
pub(super) fn confirm(question: &str) -> Result<(), AdminError> {
    use std::io::{IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        return Err(AdminError::Usage(
            "confirmation needed but stdin is not a terminal; add --yes".into(),
        ));
    }
    eprint!("{question}");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .map_err(|e| AdminError::Usage(format!("cannot read the answer: {e}")))?;
    if answer.trim().eq_ignore_ascii_case("yes") {
        Ok(())
    } else {
        Err(AdminError::Usage(
            "not confirmed; nothing was deleted".into(),
        ))
    }
}

/// A time given on the command line (RFC 3339 or local `YYYY-MM-DD HH:MM:SS`
/// or `YYYY-MM-DD`), parsed as the client parses `--pitdate`: the span it
/// names, whose first or last nanosecond the caller takes.
pub(super) fn parse_time(text: &str) -> Result<TypedTime, AdminError> {
    tandem_client::output::timefmt::parse_time(text).map_err(|e| AdminError::Usage(e.to_string()))
}
