//! `ringfence run --drive` refuses bad drive settings and unusable image files before the
//! guest boots, naming the drive, the value or the file and what to fix; and good drives boot
//! the probe guest (which leaves them alone) without touching their images.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;
use ringfence_tests::harness::TempDir;

fn run(probe: &Path, flags: &[&str]) -> Output {
    run_hello(probe, &[&["--net", "none"], flags].concat())
}

/// Refused before boot: clap's usage errors exit 2, ringfence's own 125; both name what to fix.
fn assert_refused_with_usage(o: &Output, flags: &[&str], needles: &[&str]) {
    let err = stderr(o);
    assert!(
        matches!(o.status.code(), Some(2) | Some(125)),
        "{flags:?}: status {:?}: {err}",
        o.status
    );
    for n in needles {
        assert!(err.contains(n), "{flags:?}: missing {n:?} in: {err}");
    }
    assert!(
        !stdout(o).contains("\"hello\""),
        "the guest ran: {}",
        stdout(o)
    );
}

fn sized(dir: &TempDir, name: &str, len: u64) -> String {
    let p = dir.path().join(name);
    std::fs::File::create(&p)
        .and_then(|f| f.set_len(len))
        .expect("create image");
    p.to_str().expect("utf-8 path").to_string()
}

#[test]
fn bad_drive_values_are_refused_before_boot() {
    let probe = require!(kvm_and_probe());
    let dir = TempDir::new("drive-cli");
    let img = sized(&dir, "disk.img", 1 << 20);
    let odd = sized(&dir, "odd.img", 1000);
    let empty = sized(&dir, "empty.img", 0);
    let missing = dir.path().join("missing.img");
    let missing = missing.to_str().expect("utf-8 path").to_string();
    let folder = dir.path().to_str().expect("utf-8 path").to_string();
    let d = |v: String| vec!["--drive".to_string(), v];
    let cases: Vec<(Vec<String>, Vec<String>)> = vec![
        (
            d(format!("{img},ro")),
            vec![format!("unknown key \"{img}\"")],
        ),
        (
            d(format!("path={img},rw")),
            vec!["unknown key \"rw\"".into()],
        ),
        (
            d(format!("path={img},size=1G")),
            vec!["unknown key \"size\"".into()],
        ),
        (d("id=x".into()), vec!["no path=FILE".into()]),
        (
            d(format!("path={img},root=1")),
            vec!["root is a flag".into()],
        ),
        (
            d(format!("path={img},id=a-drive-id-of-21-chars")),
            vec!["a-drive-id-of-21-chars".into(), "1 to 20 characters".into()],
        ),
        (
            [d(format!("path={img},id=x")), d(format!("path={odd},id=x"))].concat(),
            vec!["two drives have the id \"x\"".into()],
        ),
        (
            [
                d(format!("path={img},root")),
                d(format!("path={img},id=b,root")),
            ]
            .concat(),
            vec!["two drives are marked root (\"drive0\" and \"b\")".into()],
        ),
        (
            (0..17)
                .flat_map(|i| d(format!("path={img},id=d{i},ro")))
                .collect(),
            vec!["17 drives given; a VM may have at most 16".into()],
        ),
        (
            d(format!("path={missing}")),
            vec![
                "--drive drive0".into(),
                missing.clone(),
                "no such file".into(),
            ],
        ),
        (
            d(format!("path={odd},id=odd")),
            vec![
                "--drive odd".into(),
                "1000 bytes, not a multiple of 512".into(),
            ],
        ),
        (
            d(format!("path={empty}")),
            vec![format!("{empty} is empty")],
        ),
        (
            d(format!("path={folder}")),
            vec!["not a regular file or a block device".into()],
        ),
    ];
    for (flags, needles) in &cases {
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
        assert_refused_with_usage(&run(&probe, &flags), &flags, &needles);
    }
}

#[test]
fn a_file_that_cannot_be_written_is_refused_read_write_and_boots_read_only() {
    let probe = require!(kvm_and_probe());
    let dir = TempDir::new("drive-cli-ro");
    let img = sized(&dir, "locked.img", 1 << 20);
    let mut perms = std::fs::metadata(&img).expect("stat").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o444);
    std::fs::set_permissions(&img, perms).expect("chmod");
    // Root ignores permission bits; the immutable flag stops it too (and is cleared on the
    // way out, so the temporary directory can be removed).
    struct Mutable<'a>(&'a str);
    impl Drop for Mutable<'_> {
        fn drop(&mut self) {
            let _ = Command::new("chattr").args(["-i", self.0]).output();
        }
    }
    let _ = Command::new("chattr").args(["+i", &img]).output();
    let _guard = Mutable(&img);
    let writable = std::fs::OpenOptions::new().write(true).open(&img).is_ok();
    if writable {
        return eprintln!("SKIPPED: cannot make a file unwritable here (root without chattr)");
    }
    let o = run(&probe, &["--drive", &format!("path={img},id=locked")]);
    assert_refused_with_usage(
        &o,
        &["--drive"],
        &[
            "--drive locked",
            &img,
            "cannot be opened for writing",
            "read-only",
        ],
    );
    let o = run(&probe, &["--drive", &format!("path={img},id=locked,ro")]);
    assert_exit_ok(&o, "probe with a read-only drive");
}

#[test]
fn good_drives_boot_and_their_images_are_untouched() {
    let probe = require!(kvm_and_probe());
    let dir = TempDir::new("drive-cli-ok");
    let bytes: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 253) as u8).collect();
    let a = dir.file("a.img", &bytes);
    let b = dir.file("b.img", &bytes);
    let (a, b) = (a.to_str().expect("utf-8"), b.to_str().expect("utf-8"));
    let o = run(
        &probe,
        &[
            "--drive",
            &format!("path={a},id=rootfs,root"),
            "--drive",
            &format!("path={b},ro"),
        ],
    );
    assert_exit_ok(&o, "probe with two drives");
    assert_eq!(std::fs::read(a).expect("read a"), bytes);
    assert_eq!(std::fs::read(b).expect("read b"), bytes);
}
