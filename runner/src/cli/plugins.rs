//! `petnas plugins`: stage kinds and PET types with their options, and the plugin files.
use anyhow::Result;

use crate::plugins::Registry;

#[derive(Clone, Copy, clap::ValueEnum)]
enum Format {
    Text,
    Json,
    Markdown,
}

#[derive(clap::Args)]
pub(super) struct Args {
    /// The same as `--format json`.
    #[arg(long)]
    json: bool,
    /// `markdown`: the reference of every stage kind's and PET type's options
    /// (docs/options.md is this).
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
}

pub(super) fn execute(args: &Args, registry: &Registry) -> Result<i32> {
    let format = if args.json { Format::Json } else { args.format };
    let crate::plugins::list::Listing { stages, pet_types, commands } =
        crate::plugins::list::listing(registry);
    let json = match format {
        Format::Json => true,
        Format::Markdown => {
            print!("{}", crate::plugins::list::markdown(registry));
            return Ok(0);
        }
        Format::Text => false,
    };
    if json {
        let out = serde_json::json!({"plugins": registry.plugins, "refused": registry.refused, "shadowed": registry.shadowed, "stages": stages, "pet_types": pet_types, "commands": commands});
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(0);
    }
    println!("plugins:");
    for p in &registry.plugins {
        println!("  {} {}  {}", p.name, p.version, p.path.display());
    }
    for (skipped, used) in &registry.shadowed {
        println!("  (shadowed) {}  — {} is used", skipped.display(), used.display());
    }
    for r in &registry.refused {
        println!("  (refused) {}  — {}", r.path.display(), r.reason);
    }
    for (title, entries, key) in
        [("stage kinds", &stages, "kind"), ("PET types", &pet_types, "name"), ("commands", &commands, "name")]
    {
        println!("\n{title}:");
        if entries.is_empty() {
            println!("  (none)");
        }
        for e in entries {
            let io = match (e.get("inputs"), e.get("output")) {
                (Some(i), Some(o)) => format!(
                    "  [{} → {}]",
                    i.as_array()
                        .map(|a| a.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>().join(", "))
                        .unwrap_or_default(),
                    o.as_str().unwrap_or("")
                ),
                _ => String::new(),
            };
            println!(
                "  {}  — {}{io}  ({})",
                e[key].as_str().unwrap_or(""),
                e["doc"].as_str().unwrap_or(""),
                e["plugin"].as_str().unwrap_or("")
            );
            for o in e["options"].as_array().into_iter().flatten() {
                let mut notes = vec![if o["required"].as_bool() == Some(true) {
                    "required".to_string()
                } else {
                    format!("default {}", o["default"])
                }];
                let names = |key: &str| crate::plugins::list::quoted(&o[key]);
                if !names("excludes").is_empty() {
                    notes.push(format!("not with {}", names("excludes").join(", ")));
                }
                if !names("peer_names").is_empty() {
                    notes.push(format!("PEFT/transformers: {}", names("peer_names").join(", ")));
                }
                println!(
                    "      {}: {} ({}) — {}",
                    o["name"].as_str().unwrap_or(""),
                    o["type"].as_str().unwrap_or(""),
                    notes.join("; "),
                    o["doc"].as_str().unwrap_or("")
                );
            }
        }
    }
    Ok(0)
}
