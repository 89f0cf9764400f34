//! Command-line errors for scripts: a console asked for `--json` gets its
//! parse errors as JSON too, though the line did not parse.

use std::ffi::OsString;

/// Whether the raw command line asks for JSON (`--json`, `--format json`
/// or `--format=json`), looked at before it is known to parse.
#[must_use]
pub fn asks_for_json(args: &[OsString]) -> bool {
    args.iter().enumerate().any(|(i, a)| {
        a == "--json"
            || a == "--format=json"
            || (a == "--format" && args.get(i + 1).is_some_and(|v| v == "json"))
    })
}

/// clap's message on one line, without colours, usage or the pointer to
/// `--help`: what was wrong and, where clap knows them, the allowed values.
#[must_use]
pub fn plain_message(e: &clap::Error) -> String {
    if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        // clap's text here is the help page, which names nothing wrong.
        return "the command is incomplete: a subcommand is missing; --help lists them".into();
    }
    let text = e.render().to_string();
    text.lines()
        .map(|l| l.trim_start_matches("error: ").trim())
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<OsString> {
        words.iter().map(OsString::from).collect()
    }

    #[test]
    fn json_is_asked_for_by_flag_or_format() {
        assert!(asks_for_json(&args(&["tandem", "--json", "q", "b"])));
        assert!(asks_for_json(&args(&["x", "--format", "json"])));
        assert!(asks_for_json(&args(&["x", "--format=json"])));
        assert!(!asks_for_json(&args(&["x", "--format", "csv", "json"])));
        assert!(!asks_for_json(&args(&["x", "query", "--jsonx"])));
    }

    #[test]
    fn the_message_is_one_line_without_usage() {
        let e = clap::Command::new("t")
            .arg(
                clap::Arg::new("n")
                    .long("n")
                    .value_parser(clap::value_parser!(u8)),
            )
            .try_get_matches_from(["t", "--n", "300"])
            .unwrap_err();
        let text = plain_message(&e);
        assert!(text.contains("300"), "{text}");
        assert!(!text.contains('\n') && !text.contains("Usage"), "{text}");
    }
}
