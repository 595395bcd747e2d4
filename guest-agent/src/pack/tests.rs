use super::*;
use std::io::Read;

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("husk-pack-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write(p: &Path, data: &[u8], mode: u32) {
    std::fs::write(p, data).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn spec(d: &Path) -> PackSpec {
    write(&d.join("agent"), b"AGENT", 0o755);
    write(&d.join("fn-echo"), b"FUNCTION", 0o700);
    write(&d.join("data.txt"), b"some data", 0o640);
    PackSpec {
        agent: d.join("agent"),
        function: d.join("fn-echo"),
        mode: Mode::Worker,
        args: vec!["--fast".into()],
        env: BTreeMap::from([("K".into(), "V".into())]),
        files: vec![(d.join("data.txt"), "/etc/app/data.txt".into())],
        deadline_ms: Some(1234),
        output_cap: Some(99),
        gzip: false,
    }
}

struct Ent {
    name: String,
    mode: u32,
    uid: u32,
    mtime: u32,
    rdev: (u32, u32),
    data: Vec<u8>,
}

fn entries(mut bytes: &[u8]) -> Vec<Ent> {
    let mut out = Vec::new();
    loop {
        let mut r = cpio::newc::Reader::new(bytes).unwrap();
        if r.entry().is_trailer() {
            break;
        }
        let e = r.entry();
        let mut ent = Ent {
            name: e.name().to_string(),
            mode: e.mode(),
            uid: e.uid() + e.gid(),
            mtime: e.mtime(),
            rdev: (e.rdev_major(), e.rdev_minor()),
            data: Vec::new(),
        };
        r.read_to_end(&mut ent.data).unwrap();
        out.push(ent);
        bytes = r.finish().unwrap();
    }
    out
}

#[test]
fn archive_has_init_config_function_files_and_console() {
    let d = tmpdir("layout");
    let bytes = pack(&spec(&d)).unwrap();
    let ents = entries(&bytes);
    let names: Vec<&str> = ents.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "dev",
            "dev/console",
            "etc",
            "etc/app",
            "etc/app/data.txt",
            "husk",
            "husk/fn",
            "husk/fn/fn-echo",
            "husk/function.json",
            "init",
            "proc",
            "sys",
            "tmp"
        ]
    );
    let get = |n: &str| ents.iter().find(|e| e.name == n).unwrap();
    assert_eq!(get("init").data, b"AGENT");
    assert_eq!(get("init").mode, 0o100755);
    assert_eq!(get("husk/fn/fn-echo").data, b"FUNCTION");
    assert_eq!(get("husk/fn/fn-echo").mode, 0o100755);
    assert_eq!(get("etc/app/data.txt").mode, 0o100640);
    assert_eq!(get("dev/console").mode, 0o020600);
    assert_eq!(get("dev/console").rdev, (5, 1));
    assert_eq!(get("tmp").mode, 0o041777);
    assert!(ents.iter().all(|e| e.uid == 0 && e.mtime == 0));
    let cfg = FunctionConfig::from_json(Path::new("x"), &get("husk/function.json").data).unwrap();
    assert_eq!(cfg.path, PathBuf::from("/husk/fn/fn-echo"));
    assert_eq!(cfg.mode, Mode::Worker);
    assert_eq!(cfg.args, ["--fast"]);
    assert_eq!(cfg.env.get("K").map(String::as_str), Some("V"));
    assert_eq!((cfg.deadline_ms, cfg.output_cap), (1234, 99));
}

#[test]
fn same_inputs_give_same_bytes_plain_and_gzip() {
    let d = tmpdir("repro");
    let mut s = spec(&d);
    let a = pack(&s).unwrap();
    // File order on the command line does not matter either.
    write(&d.join("b.txt"), b"b", 0o644);
    s.files.push((d.join("b.txt"), "/a/b.txt".into()));
    let b1 = pack(&s).unwrap();
    s.files.reverse();
    let b2 = pack(&s).unwrap();
    assert_eq!(b1, b2);
    assert_ne!(a, b1);
    s.gzip = true;
    let g1 = pack(&s).unwrap();
    let g2 = pack(&s).unwrap();
    assert_eq!(g1, g2);
    assert_eq!(&g1[..2], &[0x1f, 0x8b]);
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(&g1[..])
        .read_to_end(&mut plain)
        .unwrap();
    assert_eq!(plain, b1);
}

#[test]
fn bad_destinations_and_duplicates_are_refused() {
    let d = tmpdir("bad");
    for dest in [
        "relative/x",
        "/a/../etc",
        "/",
        "/init",
        "/husk/function.json",
    ] {
        let mut s = spec(&d);
        s.files = vec![(d.join("data.txt"), dest.into())];
        let e = pack(&s).unwrap_err();
        assert!(
            matches!(e, PackError::BadDest(..) | PackError::Duplicate(_)),
            "{dest}: {e:?}"
        );
    }
    // A file where a directory is needed.
    let mut s = spec(&d);
    s.files = vec![
        (d.join("data.txt"), "/x".into()),
        (d.join("data.txt"), "/x/y".into()),
    ];
    assert!(matches!(pack(&s), Err(PackError::Duplicate(_))));
    let mut s = spec(&d);
    s.agent = d.join("missing");
    assert!(matches!(pack(&s), Err(PackError::Read(..))));
    let mut s = spec(&d);
    s.deadline_ms = Some(0);
    assert!(matches!(pack(&s), Err(PackError::Config(_))));
}
