//! The PostCache image, assembled without a container engine as the Dockerfile builds it: the
//! `postcache` binary linked statically (musl) on an empty base, user 65532, entrypoint
//! `/postcache`, written as an OCI image layout by crane (built from the Go module proxy by
//! `scripts/install-deps`). The chart's default image is this image's name.
//!
//! ```text
//! cargo build --target x86_64-unknown-linux-musl ─▶ layer.tar ─▶ crane append --oci-empty-base
//!   ─▶ crane mutate (user, entrypoint, platform) ─▶ crane pull --format=oci ─▶ layout/
//! ```
//! The release build goes to its own target dir under `~/.cache/postcache` (the operator tests'
//! build dir stays unlocked meanwhile); a warm rebuild takes seconds.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use postcache_testkit::{Process, ProcessSpec, free_port, http_get, tool};
use serde_json::Value;

use crate::repo;

/// The image's name: the chart's default image (repository and appVersion) must be this.
pub const REFERENCE: &str = concat!("ghcr.io/postcache/postcache:", env!("CARGO_PKG_VERSION"));

const TARGET: &str = "x86_64-unknown-linux-musl";
const USER: &str = "65532:65532";
/// The image's defaults, as the Dockerfile sets them: every interface (so tokens are required),
/// the SQLite file under the data volume.
const IMAGE_LISTEN: &str = "0.0.0.0:8080";
const IMAGE_DATABASE: &str = "sqlite:/data/postcache.db";

/// Builds the static `postcache` binary for [`TARGET`] in release mode; returns its path.
pub(crate) fn build_static_binary() -> PathBuf {
    let target_dir = match std::env::var_os("POSTCACHE_IMAGE_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/postcache/target-image")
        }
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    // Only the environment `scripts/test` gives its own build of this binary (before the tests),
    // so that this build finds it fresh instead of rebuilding for `cargo test`'s variables.
    let kept: Vec<(String, std::ffi::OsString)> = ["PATH", "HOME", "CARGO_HOME", "RUSTUP_HOME"]
        .iter()
        .filter_map(|k| Some((k.to_string(), std::env::var_os(k)?)))
        .collect();
    let out = Command::new(cargo)
        .env_clear()
        .envs(kept)
        .current_dir(repo())
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            TARGET,
            "-p",
            "postcache",
        ])
        .env("CARGO_TARGET_DIR", &target_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the static build failed (is the {TARGET} target installed? scripts/install-deps adds it):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    target_dir.join(TARGET).join("release/postcache")
}

fn run(program: &Path, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{} {args:?} failed:\n{}{}",
        program.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// crane's in-memory registry on loopback: append and mutate work on registry images only.
fn registry(dir: &Path) -> (Process, u16) {
    let port = free_port();
    let process = Process::start(ProcessSpec {
        name: "crane-registry".into(),
        program: tool("crane"),
        args: [
            "registry",
            "serve",
            "--address",
            &format!("127.0.0.1:{port}"),
        ]
        .map(str::to_owned)
        .to_vec(),
        env: vec![],
        user: None,
        log: dir.join("registry.log"),
        ready: Box::new(
            move || match http_get(([127, 0, 0, 1], port).into(), "/v2/")? {
                (200, _) => Ok(()),
                (status, body) => Err(format!("{status}: {body}")),
            },
        ),
        ready_timeout: Duration::from_secs(60),
        stop_signal: Signal::SIGTERM,
    });
    (process, port)
}

/// Pushes the image as `reference` (`<registry on 127.0.0.1>/<name>:<tag>`, plain HTTP),
/// building its layer in `dir`.
pub(crate) fn push(binary: &Path, dir: &Path, reference: &str) {
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(rootfs.join("data")).unwrap();
    std::fs::copy(binary, rootfs.join("postcache")).unwrap();
    let layer = dir.join("layer.tar");
    // Reproducible (fixed mtime): the binary root-owned (readable and executable by 65532), the
    // data directory the user's.
    let tar = Path::new("tar");
    for (mode, owner, entry) in [("-cf", "0", "postcache"), ("-rf", "65532", "data")] {
        run(
            tar,
            &[
                &format!("--owner={owner}"),
                &format!("--group={owner}"),
                "--numeric-owner",
                "--mtime=@0",
                "--mode=0755",
                "--no-recursion",
                mode,
                layer.to_str().unwrap(),
                "-C",
                rootfs.to_str().unwrap(),
                entry,
            ],
        );
    }

    let crane = tool("crane");
    run(
        &crane,
        &[
            "append",
            "--insecure",
            "--oci-empty-base",
            "-f",
            layer.to_str().unwrap(),
            "-t",
            reference,
        ],
    );
    run(
        &crane,
        &[
            "mutate",
            "--insecure",
            reference,
            "--entrypoint=/postcache",
            "--cmd=serve",
            &format!("--user={USER}"),
            "--exposed-ports=8080/tcp",
            "--env",
            &format!("POSTCACHE_LISTEN={IMAGE_LISTEN}"),
            "--env",
            &format!("POSTCACHE_DATABASE_URL={IMAGE_DATABASE}"),
            "--set-platform=linux/amd64",
            "-l",
            &format!(
                "org.opencontainers.image.version={}",
                env!("CARGO_PKG_VERSION")
            ),
            "-l",
            "org.opencontainers.image.source=https://github.com/postcache/postcache",
            "-t",
            reference,
        ],
    );
    run(&crane, &["validate", "--insecure", "--remote", reference]);
}

/// Assembles the image as an OCI layout in `dir/layout`; returns the layout's path.
fn assemble(binary: &Path, dir: &Path) -> PathBuf {
    let crane = tool("crane");
    let (_registry, port) = registry(dir);
    let local = format!(
        "127.0.0.1:{port}/postcache/postcache:{}",
        env!("CARGO_PKG_VERSION")
    );
    push(binary, dir, &local);
    let layout = dir.join("layout");
    run(
        &crane,
        &[
            "pull",
            "--insecure",
            "--format=oci",
            &local,
            layout.to_str().unwrap(),
        ],
    );

    // crane names nothing in the layout; name the image as it is published (containerd's
    // `ctr images import` reads io.containerd.image.name, OCI tools the ref.name).
    let index_path = layout.join("index.json");
    let mut index: Value = serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    index["manifests"][0]["annotations"] = serde_json::json!({
        "org.opencontainers.image.ref.name": REFERENCE,
        "io.containerd.image.name": REFERENCE,
    });
    std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
    layout
}

fn blob(layout: &Path, digest: &str) -> PathBuf {
    let (algorithm, hex) = digest.split_once(':').unwrap();
    let path = layout.join("blobs").join(algorithm).join(hex);
    let sum = run(Path::new("sha256sum"), &[path.to_str().unwrap()]);
    assert_eq!(
        sum.split_whitespace().next(),
        Some(hex),
        "{digest} does not match its content"
    );
    path
}

fn json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// True when the ELF file has no program interpreter (PT_INTERP): it needs no dynamic loader.
fn is_static_elf(bytes: &[u8]) -> bool {
    assert_eq!(&bytes[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(bytes[4], 2, "not a 64-bit ELF");
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(bytes[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).all(|i| {
        let at = phoff + i * phentsize;
        u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) != 3 // PT_INTERP
    })
}

#[test]
fn the_image_is_a_static_binary_on_an_empty_base_named_as_the_chart_says() {
    let binary = build_static_binary();
    assert!(
        is_static_elf(&std::fs::read(&binary).unwrap()),
        "{} is dynamically linked",
        binary.display()
    );

    let dir = tempfile::tempdir().unwrap();
    let layout = assemble(&binary, dir.path());

    assert_eq!(
        json(&layout.join("oci-layout"))["imageLayoutVersion"],
        "1.0.0"
    );
    let index = json(&layout.join("index.json"));
    assert_eq!(index["schemaVersion"], 2);
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1, "{index}");
    let descriptor = &manifests[0];
    assert_eq!(
        descriptor["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(
        descriptor["annotations"]["org.opencontainers.image.ref.name"],
        REFERENCE
    );

    let manifest = json(&blob(&layout, descriptor["digest"].as_str().unwrap()));
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.oci.image.config.v1+json"
    );
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "one layer on an empty base: {manifest}");
    let config = json(&blob(
        &layout,
        manifest["config"]["digest"].as_str().unwrap(),
    ));
    assert_eq!(config["os"], "linux");
    assert_eq!(config["architecture"], "amd64");
    assert_eq!(config["config"]["User"], USER);
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/postcache"])
    );
    assert_eq!(config["config"]["Cmd"], serde_json::json!(["serve"]));
    let env: Vec<&str> = config["config"]["Env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for wanted in [
        format!("POSTCACHE_LISTEN={IMAGE_LISTEN}"),
        format!("POSTCACHE_DATABASE_URL={IMAGE_DATABASE}"),
    ] {
        assert!(env.contains(&wanted.as_str()), "{env:?}");
    }
    assert!(config["config"]["ExposedPorts"]["8080/tcp"].is_object());
    assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), 1);

    // The layer holds the binary and the data directory, and the binary runs with nothing
    // else around it.
    let layer = blob(&layout, layers[0]["digest"].as_str().unwrap());
    let listing = run(Path::new("tar"), &["-tvzf", layer.to_str().unwrap()]);
    let entries: Vec<&str> = listing.lines().collect();
    assert_eq!(entries.len(), 2, "{listing}");
    assert!(entries[0].starts_with("-rwxr-xr-x 0/0"), "{listing}");
    assert!(
        entries[1].starts_with("drwxr-xr-x 65532/65532"),
        "{listing}"
    );
    let rootfs = dir.path().join("extracted");
    std::fs::create_dir(&rootfs).unwrap();
    run(
        Path::new("tar"),
        &[
            "-xzf",
            layer.to_str().unwrap(),
            "-C",
            rootfs.to_str().unwrap(),
        ],
    );
    let version = run(&rootfs.join("postcache"), &["--version"]);
    assert_eq!(
        version.trim(),
        format!("postcache {}", env!("CARGO_PKG_VERSION"))
    );

    // Run as a container engine runs it (the layer as root directory, the image's user,
    // environment and command): without tokens it refuses to listen on every interface; with
    // them it serves, and keeps its data in the data directory.
    // Found on this process's PATH: the command's own environment is the image's alone.
    let chroot = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join("chroot"))
        .find(|path| path.is_file())
        .expect("chroot (coreutils) on PATH");
    let container = |extra: &[(&str, &str)]| {
        let mut command = Command::new(&chroot);
        command
            .arg(format!("--userspec={USER}"))
            .arg(&rootfs)
            .arg("/postcache")
            .arg("serve")
            .env_clear();
        command.envs(env.iter().filter_map(|e| e.split_once('=')));
        command.envs(extra.iter().copied());
        command
    };
    let refused = container(&[]).output().unwrap();
    assert!(!refused.status.success());
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("POSTCACHE_API_TOKENS"), "{why}");
    // Every interface, as the image says, on a port of this test's.
    let port = free_port();
    let listen = format!("0.0.0.0:{port}");
    let mut served = container(&[
        ("POSTCACHE_API_TOKENS", "image-test-token"),
        ("POSTCACHE_LISTEN", &listen),
    ])
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    postcache_testkit::wait_until("the container to be ready", Duration::from_secs(30), || {
        match http_get(addr, "/readyz")? {
            (200, _) => Ok(()),
            (status, body) => Err(format!("{status}: {body}")),
        }
    });
    let created = run(
        Path::new("curl"),
        &[
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "authorization: Bearer image-test-token",
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"author_id":"ann","title":"t","body":"b"}"#,
            &format!("http://{addr}/v1/posts"),
        ],
    );
    assert_eq!(created.trim(), "201");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(served.id() as i32),
        Signal::SIGTERM,
    );
    assert!(served.wait().unwrap().success());
    let database = std::fs::metadata(rootfs.join("data/postcache.db")).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&database),
        65532,
        "the database file in the data directory, the image user's"
    );

    // The chart installs exactly this image by default.
    let rendered = crate::chart::helm(
        &[
            "template",
            "postcache",
            repo().join("charts/postcache").to_str().unwrap(),
            "--kube-version",
            crate::chart::KUBE_VERSION,
        ],
        None,
    )
    .unwrap();
    let mut images: Vec<&str> = rendered
        .lines()
        .filter_map(|l| l.trim().strip_prefix("image: "))
        .collect();
    images.dedup(); // the operator's Deployment and the `helm test` Pod
    assert_eq!(images, [REFERENCE], "the chart's images: {images:?}");
    let chart = std::fs::read_to_string(repo().join("charts/postcache/Chart.yaml")).unwrap();
    assert!(
        chart.contains(&format!("appVersion: \"{}\"", env!("CARGO_PKG_VERSION"))),
        "{chart}"
    );
}
