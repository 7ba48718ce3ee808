//! `calm data stats FILE`: what a dataset holds, per culture and class.

use std::path::PathBuf;

use calm_data::TableSpec;
use clap::{Args, Subcommand};

use super::error::CliError;

#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Samples per culture and class, texts and samples in all, of a CREHate split or of a
    /// CSV/JSONL table (given its column names). A malformed file is an error naming the line.
    Stats(StatsArgs),
}

/// The column flags of a generic table: all three, or none for the CREHate layout.
#[derive(Args, Debug, Clone)]
pub struct Columns {
    /// Column (field) holding the text; with --culture and --label.
    #[arg(long, requires_all = ["culture", "label"])]
    pub text: Option<String>,
    /// Column (field) holding the culture; with --text and --label.
    #[arg(long, requires_all = ["text", "label"])]
    pub culture: Option<String>,
    /// Column (field) holding the label; with --text and --culture.
    #[arg(long, requires_all = ["text", "culture"])]
    pub label: Option<String>,
}

impl Columns {
    /// The table's columns, or `None` for a CREHate split (clap makes the flags all or nothing).
    pub fn spec(&self) -> Option<TableSpec> {
        match (&self.text, &self.culture, &self.label) {
            (Some(text), Some(culture), Some(label)) => {
                Some(TableSpec { text: text.clone(), culture: culture.clone(), label: label.clone() })
            }
            _ => None,
        }
    }
}

#[derive(Args, Debug)]
pub struct StatsArgs {
    /// The dataset: a CREHate split (CSV with `ID,Text,Australia_Hate,...`), or with --text,
    /// --culture and --label a `.csv` table (header row) or `.jsonl` (one JSON object a line).
    pub file: PathBuf,
    #[command(flatten)]
    pub columns: Columns,
    /// Print the counts as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(command: DataCommand) -> Result<(), CliError> {
    match command {
        DataCommand::Stats(args) => stats(args),
    }
}

fn stats(args: StatsArgs) -> Result<(), CliError> {
    let stats = calm_data::load(&args.file, args.columns.spec().as_ref())?.stats();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&stats).expect("stats serialise"));
    } else {
        println!("{stats}");
    }
    Ok(())
}
