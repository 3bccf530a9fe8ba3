//! `selfheal dead-letters`: the messages a service gave up on, and carrying them out again.

use std::process::ExitCode;

use selfheal_bus::nats::{NatsBus, NatsOptions};

/// What to do with the dead letters.
#[derive(clap::Args)]
pub struct DeadLettersArgs {
    #[command(subcommand)]
    command: DeadLettersCommand,
    /// The NATS server the services use.
    #[arg(
        long,
        global = true,
        env = "SELFHEAL_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    nats_url: String,
    #[command(flatten)]
    nats: crate::nats_args::NatsArgs,
}

#[derive(clap::Subcommand)]
enum DeadLettersCommand {
    /// Every dead letter kept: its number, the consumer that gave up, the subject, how many
    /// deliveries it had and why.
    List {
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Publish dead letters again on their subjects (once their cause is fixed), and remove them.
    Retry {
        /// The letters' numbers, as `list` shows them.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        sequences: Vec<u64>,
        /// Every letter kept.
        #[arg(long)]
        all: bool,
    },
}

pub async fn run(args: DeadLettersArgs) -> anyhow::Result<ExitCode> {
    let options = NatsOptions::new(&args.nats_url, "selfheal-cli").with_config(args.nats.auth()?);
    let bus = NatsBus::connect(options).await?;
    match args.command {
        DeadLettersCommand::List { json } => {
            let letters = bus.dead_letters().await?;
            if json {
                for letter in &letters {
                    println!(
                        "{}",
                        serde_json::json!({
                            "sequence": letter.sequence,
                            "consumer": letter.consumer,
                            "subject": letter.subject,
                            "original_sequence": letter.original_sequence,
                            "deliveries": letter.deliveries,
                            "reason": letter.reason,
                            "at": letter.at,
                            "headers": letter.headers.iter().collect::<std::collections::BTreeMap<_, _>>(),
                        })
                    );
                }
            } else if letters.is_empty() {
                println!("no dead letters");
            } else {
                println!(
                    "{:>6}  {:<24}  {:<16}  {:<40}  {:>10}  reason",
                    "#", "at", "consumer", "subject", "deliveries"
                );
                for l in &letters {
                    println!(
                        "{:>6}  {:<24}  {:<16}  {:<40}  {:>10}  {}",
                        l.sequence, l.at, l.consumer, l.subject, l.deliveries, l.reason
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        DeadLettersCommand::Retry { sequences, all } => {
            let sequences = if all {
                bus.dead_letters().await?.iter().map(|l| l.sequence).collect()
            } else {
                sequences
            };
            let mut missing = 0;
            for sequence in sequences {
                match bus.retry_dead_letter(sequence).await? {
                    Some(letter) => println!(
                        "dead letter {sequence}: published again on {} (for {})",
                        letter.subject, letter.consumer
                    ),
                    None => {
                        eprintln!("selfheal: no dead letter {sequence}");
                        missing += 1;
                    }
                }
            }
            Ok(if missing == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
