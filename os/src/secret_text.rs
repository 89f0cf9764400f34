//! Error text about files that hold secrets, with the file's own lines left
//! out.
//!
//! A TOML parser's error quotes the line it failed on, with a caret under
//! the spot. In an options file or a credentials file that line may be the
//! password or the secret key itself (a stray quote in it is a common
//! mistake), and the error goes to a terminal, a journal and `dsierror.log`.
//! The position and the reason are enough to find the mistake.

/// `error` without the lines that quote the file: a line number and `|`
/// followed by the file's text, or a `|` line with the caret. The position
/// ("at line 3, column 21") and the reason stay.
pub fn without_quoted_lines(error: &str) -> String {
    let quotes_the_file = |line: &str| {
        let rest = line
            .trim_start()
            .trim_start_matches(|c: char| c.is_ascii_digit());
        rest.trim_start().starts_with('|')
    };
    let kept: Vec<&str> = error
        .lines()
        .filter(|line| !quotes_the_file(line) && !line.trim().is_empty())
        .collect();
    kept.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quoted_line_goes_and_the_position_and_reason_stay() {
        let error = "TOML parse error at line 2, column 28\n  |\n2 | secret_access_key = \"s3cr\\qet\"\n  |                            ^\ninvalid escape sequence\nexpected `b`, `f`, `n`, `r`, `t`, `u`, `U`, `\\`, `\"`\n in /etc/tandem/s3.toml";
        let shown = without_quoted_lines(error);
        assert!(!shown.contains("s3cr"), "{shown}");
        assert!(shown.contains("at line 2, column 28"), "{shown}");
        assert!(shown.contains("invalid escape sequence"), "{shown}");
        assert!(shown.contains("/etc/tandem/s3.toml"), "{shown}");
        assert_eq!(without_quoted_lines("plain reason"), "plain reason");
    }
}
