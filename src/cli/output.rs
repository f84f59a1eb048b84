//! Where the command line's results go: stdout, as text for people or JSON for programs.
//!
//! A reader that closes the pipe early (`runvisor runs | head -1`) ends the program quietly with
//! exit 0: writes return [`CliError::Closed`] instead of panicking as `println!` would.

use std::io::Write;

use serde::Serialize;

use super::exit::CliError;

/// `--output human` (the default) or `--output json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    #[default]
    Human,
    Json,
}

#[derive(Debug, Clone, Copy)]
pub struct Out {
    pub format: Format,
}

impl Out {
    pub fn json(&self) -> bool {
        self.format == Format::Json
    }

    /// Writes text (a newline is added unless it ends with one).
    pub fn text(&self, text: &str) -> Result<(), CliError> {
        let mut stdout = std::io::stdout().lock();
        let written = if text.ends_with('\n') { stdout.write_all(text.as_bytes()) } else { writeln!(stdout, "{text}") };
        written.and_then(|()| stdout.flush()).map_err(closed)
    }

    /// Writes one JSON document on one line (a JSON line, for streams).
    pub fn value<T: Serialize>(&self, value: &T) -> Result<(), CliError> {
        let line = serde_json::to_string(value).map_err(|e| CliError::Other(e.into()))?;
        self.text(&line)
    }

    /// `human` as text, or `json` as one JSON document, by the chosen format.
    pub fn either<T: Serialize>(&self, human: impl FnOnce() -> String, json: &T) -> Result<(), CliError> {
        match self.format {
            Format::Human => self.text(&human()),
            Format::Json => self.value(json),
        }
    }
}

fn closed(error: std::io::Error) -> CliError {
    if error.kind() == std::io::ErrorKind::BrokenPipe { CliError::Closed } else { CliError::Other(error.into()) }
}
