//! The offline commands of plinthd: `config default|dump|migrate|check` and
//! `plugins ls|graph`. They print to standard output and start nothing.

use std::fmt::Write as _;
use std::path::Path;

use plinth_core::config::{ConfigLoader, default_toml};

use crate::paths::Defaults;
use crate::setup::{Options, check_startable, prepare, registry};

/// `config default`: the full default config of the plugins compiled in.
///
/// # Errors
/// Invalid registrations in this build.
pub fn config_default() -> anyhow::Result<String> {
    let registry = registry()?;
    let mut text = default_toml(&registry);
    // Show this user's paths, not the root defaults, as `plinthd` would use them.
    let defaults = Defaults::for_current_user();
    let base = defaults.config();
    let mut table: toml::Table = text.parse()?;
    table.insert(
        "root".into(),
        toml::Value::String(base.root.display().to_string()),
    );
    table.insert(
        "state".into(),
        toml::Value::String(base.state.display().to_string()),
    );
    // Where plugin libraries are looked for, in a build that loads them.
    if cfg!(feature = "dynamic-loader") {
        table.insert(
            "plugin_dir".into(),
            toml::Value::String(base.root.join("plugins").display().to_string()),
        );
    }
    if let Some(toml::Value::Table(grpc)) = table.get_mut("grpc") {
        grpc.insert(
            "address".into(),
            toml::Value::String(base.grpc.address.clone()),
        );
    }
    text = toml::to_string_pretty(&table)?;
    Ok(text)
}

/// `config dump`: the effective config after imports, overrides and defaults.
///
/// # Errors
/// Any config error.
pub fn config_dump(options: &Options) -> anyhow::Result<String> {
    let prepared = prepare(options)?;
    Ok(prepared.config.effective_toml(&prepared.registry))
}

/// `config migrate <file>`: the file as the current version, holding only its own keys.
///
/// # Errors
/// Any error reading or migrating the file.
pub fn config_migrate(path: &Path) -> anyhow::Result<String> {
    let registry = registry()?;
    Ok(ConfigLoader::new(&registry).migrate_file(path)?)
}

/// `config check`: validates without starting; returns the reports (warnings).
///
/// # Errors
/// Any config error (in strict mode, every report).
pub fn config_check(options: &Options) -> anyhow::Result<String> {
    let prepared = prepare(options)?;
    // Everything a start checks short of initialising plugins.
    check_startable(&prepared)?;
    let mut out = String::new();
    for diagnostic in &prepared.config.diagnostics {
        let _ = writeln!(out, "warning: {diagnostic}");
    }
    let files: Vec<String> = prepared
        .config
        .files
        .iter()
        .map(|f| f.display().to_string())
        .collect();
    let source = if files.is_empty() {
        "embedded defaults".to_string()
    } else {
        files.join(", ")
    };
    let _ = writeln!(
        out,
        "config ok ({source}): {} plugins, {} enabled, {} disabled",
        prepared.registrations.len(),
        prepared.graph.order().len(),
        prepared.graph.disabled().len()
    );
    Ok(out)
}

/// `plugins ls`: what this build carries, what config disables, and the init order.
///
/// # Errors
/// Any config error.
pub fn plugins_ls(options: &Options, quiet: bool) -> anyhow::Result<String> {
    let prepared = prepare(options)?;
    let mut rows: Vec<[String; 5]> = Vec::new();
    for (position, &index) in prepared.graph.order().iter().enumerate() {
        let entry = &prepared.registry.entries()[index];
        rows.push([
            (position + 1).to_string(),
            entry.registration.plugin_type().to_string(),
            entry.registration.id().to_string(),
            "enabled".to_string(),
            entry.registration.required_types().join(","),
        ]);
    }
    for &index in prepared.graph.disabled() {
        let entry = &prepared.registry.entries()[index];
        rows.push([
            "-".to_string(),
            entry.registration.plugin_type().to_string(),
            entry.registration.id().to_string(),
            "disabled".to_string(),
            entry.registration.required_types().join(","),
        ]);
    }
    if quiet {
        return Ok(rows
            .iter()
            .map(|r| format!("{}.{}\n", r[1], r[2]))
            .collect());
    }
    Ok(table(&["ORDER", "TYPE", "ID", "STATUS", "REQUIRES"], &rows))
}

/// `plugins graph --format dot`.
///
/// # Errors
/// Any config error.
pub fn plugins_graph(options: &Options) -> anyhow::Result<String> {
    let prepared = prepare(options)?;
    Ok(prepared.graph.to_dot(&prepared.registrations))
}

/// Left-aligned columns separated by at least four spaces, like Go's tabwriter in ctr.
pub fn table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == N {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:<width$}    ", width = widths[i]);
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}
