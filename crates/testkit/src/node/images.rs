//! Redis and PostgreSQL images assembled from this machine's Debian packages, without an engine
//! or a registry outside the machine: the packages' files and the shared libraries they link
//! (found with `ldd`), `bash` and `getent`, `busybox` for the small tools the operator's scripts
//! call, `/etc/passwd` with the official images' uid 999, one layer on an empty base pushed with
//! crane. They differ from the official `redis`/`postgres` images in every way the operator must
//! not depend on: no entrypoint script, other paths (PostgreSQL under `/usr/lib/postgresql/N`),
//! another PostgreSQL major version, a Redis 7.0.
//!
//! ```text
//! /usr/bin/{redis-server,redis-cli}  or  /usr/lib/postgresql/N/{bin,lib} + /usr/share/postgresql/N
//! + ldd closure + bash, getent + busybox applets + /etc/{passwd,group,nsswitch.conf} + /tmp
//! ```

use std::collections::BTreeSet;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::run;
use crate::{tool, unique_name};

/// What goes into one image.
struct Contents {
    /// Files and directories of the host, copied to the same path (directories recursively).
    paths: Vec<PathBuf>,
    /// Parts of a path that leave it out (PostgreSQL's JIT, which links the 100 MB libLLVM).
    exclude: &'static [&'static str],
    /// The image's `PATH`.
    path_env: String,
}

/// Pushes an image of Debian's `redis-server` and `redis-cli` to `registry`; returns its
/// reference (a fresh tag per call, so a node never runs a stale image of the same name).
pub(super) fn push_redis(registry: &str, dir: &Path) -> String {
    let contents = Contents {
        paths: vec![
            PathBuf::from("/usr/bin/redis-server"),
            PathBuf::from("/usr/bin/redis-cli"),
        ],
        exclude: &[],
        path_env: "/usr/local/bin:/usr/bin".into(),
    };
    push(registry, dir, "redis", &contents)
}

/// Pushes an image of Debian's PostgreSQL (server, `initdb`, `pg_ctl`, `psql`,
/// `pg_basebackup`, `pg_isready`, on `PATH`) to `registry`; returns its reference.
pub(super) fn push_postgres(registry: &str, dir: &Path) -> String {
    // .../postgresql/<major>/bin/postgres
    let bin = tool("postgres")
        .parent()
        .map(Path::to_path_buf)
        .expect("postgres has a directory");
    let version_dir = bin.parent().expect("postgres's bin has a parent");
    let major = version_dir
        .file_name()
        .and_then(|n| n.to_str())
        .expect("a major-version directory")
        .to_owned();
    let contents = Contents {
        paths: vec![
            version_dir.to_path_buf(),
            PathBuf::from(format!("/usr/share/postgresql/{major}")),
            PathBuf::from("/usr/share/zoneinfo"),
        ],
        exclude: &["llvmjit", "/bitcode"],
        path_env: format!("{}:/usr/local/bin:/usr/bin", bin.display()),
    };
    push(registry, dir, "postgres", &contents)
}

fn push(registry: &str, dir: &Path, name: &str, contents: &Contents) -> String {
    let work = dir.join(name);
    let _ = std::fs::remove_dir_all(&work);
    let root = work.join("rootfs");
    std::fs::create_dir_all(&root).expect("create the image root");
    let mut binaries = Vec::new();
    for path in &contents.paths {
        copy_tree(path, &root, contents.exclude, &mut binaries);
    }
    for program in ["bash", "getent"] {
        let path = PathBuf::from("/usr/bin").join(program);
        copy_tree(&path, &root, &[], &mut binaries);
    }
    copy_libraries(&binaries, &root);
    add_busybox(&root);
    add_system_files(&root);

    let layer = work.join("layer.tar");
    let layer_arg = layer.display().to_string();
    let root_arg = root.display().to_string();
    run(
        Path::new("tar"),
        &[
            "--sort=name",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "--mtime=@0",
            "-cf",
            &layer_arg,
            "-C",
            &root_arg,
            ".",
        ],
        &work,
    );
    let reference = format!("{registry}/debian/{name}:{}", unique_name("t"));
    let crane = tool("crane");
    run(
        &crane,
        &[
            "append",
            "--insecure",
            "--oci-empty-base",
            "-f",
            &layer_arg,
            "-t",
            &reference,
        ],
        &work,
    );
    run(
        &crane,
        &[
            "mutate",
            "--insecure",
            &reference,
            "--set-platform=linux/amd64",
            &format!("--env=PATH={}", contents.path_env),
            "--env=LANG=C.UTF-8",
            "--env=TZ=UTC",
            "-t",
            &reference,
        ],
        &work,
    );
    reference
}

fn excluded(path: &Path, exclude: &[&str]) -> bool {
    let text = path.to_string_lossy();
    exclude.iter().any(|part| text.contains(part))
}

/// Copies `path` (a file, symlink or directory, recursively) to the same place under `root`,
/// its parents resolved (`/lib` is `/usr/lib` here); collects the ELF files it copies.
fn copy_tree(path: &Path, root: &Path, exclude: &[&str], binaries: &mut Vec<PathBuf>) {
    if excluded(path, exclude) {
        return;
    }
    let meta = std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/install-deps)", path.display()));
    let dest = destination(path, root);
    if meta.is_dir() {
        std::fs::create_dir_all(&dest).expect("create an image directory");
        let entries = std::fs::read_dir(path).expect("read a package directory");
        for entry in entries {
            copy_tree(
                &entry.expect("a directory entry").path(),
                root,
                exclude,
                binaries,
            );
        }
    } else if meta.file_type().is_symlink() {
        let target = std::fs::read_link(path).expect("read a symlink");
        let _ = std::fs::remove_file(&dest);
        symlink(&target, &dest).expect("copy a symlink");
        // The link's target comes too (`redis-server -> redis-check-rdb`), unless already there.
        let target = path.parent().unwrap_or(Path::new("/")).join(target);
        if !dest_exists(&target, root) {
            copy_tree(&target, root, exclude, binaries);
        }
    } else {
        copy_file(path, &dest);
        if is_elf(path) {
            binaries.push(path.to_path_buf());
        }
    }
}

fn dest_exists(path: &Path, root: &Path) -> bool {
    std::fs::symlink_metadata(destination(path, root)).is_ok()
}

/// `root` + `path` with `path`'s directory resolved on the host (so `/lib/x/libc.so.6` lands in
/// `usr/lib/x/`, and the image's `lib → usr/lib` link finds it), its file name kept.
fn destination(path: &Path, root: &Path) -> PathBuf {
    let parent = path.parent().unwrap_or(Path::new("/"));
    let parent = std::fs::canonicalize(parent).unwrap_or_else(|_| parent.to_path_buf());
    let dest_parent = root.join(parent.strip_prefix("/").unwrap_or(&parent));
    std::fs::create_dir_all(&dest_parent).expect("create an image directory");
    match path.file_name() {
        Some(name) => dest_parent.join(name),
        None => dest_parent,
    }
}

fn copy_file(from: &Path, to: &Path) {
    std::fs::copy(from, to)
        .unwrap_or_else(|e| panic!("copy {} into the image: {e}", from.display()));
}

fn is_elf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == *b"\x7fELF"
}

/// Copies every shared library the binaries load (the transitive closure `ldd` prints), under
/// the name the loader asks for.
fn copy_libraries(binaries: &[PathBuf], root: &Path) {
    let mut libraries = BTreeSet::new();
    for binary in binaries {
        let out = Command::new("ldd").arg(binary).output().expect("run ldd");
        // "not a dynamic executable" (exit 1) has nothing to copy.
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let path = match line.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next(),
                None => line.split_whitespace().next(),
            };
            if let Some(path) = path.filter(|p| p.starts_with('/')) {
                libraries.insert(PathBuf::from(path));
            }
        }
    }
    for library in libraries {
        let dest = destination(&library, root);
        if !dest.exists() {
            copy_file(&library, &dest);
        }
    }
}

/// `busybox` and a link for each of its applets that the image does not have already.
fn add_busybox(root: &Path) {
    let busybox = PathBuf::from("/usr/bin/busybox");
    let bin = root.join("usr/bin");
    copy_file(&busybox, &bin.join("busybox"));
    let out = Command::new(&busybox)
        .arg("--list")
        .output()
        .expect("run busybox --list (install busybox-static: scripts/install-deps)");
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        let link = bin.join(applet);
        if !applet.is_empty() && std::fs::symlink_metadata(&link).is_err() {
            symlink("busybox", &link).expect("link a busybox applet");
        }
    }
    std::fs::create_dir_all(root.join("usr/local/bin")).expect("create /usr/local/bin");
}

/// The merged-/usr links, users and groups (uid 999 as in the official images), name service
/// switch, a world-writable `/tmp`.
fn add_system_files(root: &Path) {
    for (link, target) in [
        ("bin", "usr/bin"),
        ("sbin", "usr/bin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ] {
        if std::fs::symlink_metadata(root.join(link)).is_err() {
            symlink(target, root.join(link)).expect("link a merged-/usr directory");
        }
    }
    let etc = root.join("etc");
    std::fs::create_dir_all(&etc).expect("create /etc");
    let files = [
        (
            "passwd",
            "root:x:0:0:root:/root:/bin/sh\n\
             postgres:x:999:999:PostgreSQL:/var/lib/postgresql:/bin/sh\n\
             redis:x:999:999:Redis:/data:/bin/sh\n\
             nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        ),
        (
            "group",
            "root:x:0:\npostgres:x:999:\nredis:x:999:\nnogroup:x:65534:\n",
        ),
        (
            "nsswitch.conf",
            "passwd: files\ngroup: files\nhosts: files dns\n",
        ),
    ];
    for (name, content) in files {
        std::fs::write(etc.join(name), content).expect("write an /etc file");
    }
    let tmp = root.join("tmp");
    std::fs::create_dir_all(&tmp).expect("create /tmp");
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777)).expect("chmod /tmp");
}
