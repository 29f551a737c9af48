//! Where the parts' programs are: the version-pinned cache that `scripts/install-deps` fills,
//! Debian's PostgreSQL directory, then `PATH`.

use std::path::{Path, PathBuf};

/// The path of the program `name`.
///
/// Looks in `$POSTCACHE_TOOLS_BIN` (default `~/.cache/postcache/tools/bin`, where the install
/// script links the pinned control-plane builds), then in the newest `/usr/lib/postgresql/*/bin`,
/// then on `PATH`.
///
/// # Panics
/// When the program is nowhere: the message says to run `scripts/install-deps`.
pub fn tool(name: &str) -> PathBuf {
    search_dirs()
        .into_iter()
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` not found: run scripts/install-deps (searched {:?})",
                search_dirs()
            )
        })
}

fn search_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    match std::env::var_os("POSTCACHE_TOOLS_BIN") {
        Some(dir) => dirs.push(PathBuf::from(dir)),
        None => {
            if let Some(home) = std::env::var_os("HOME") {
                dirs.push(Path::new(&home).join(".cache/postcache/tools/bin"));
            }
        }
    }
    dirs.extend(newest_postgres_bin());
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs
}

fn newest_postgres_bin() -> Option<PathBuf> {
    std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .max()
        .map(|v| PathBuf::from(format!("/usr/lib/postgresql/{v}/bin")))
}
