//! The Vault directory: atomic writes (temp file, fsync, rename, fsync the directory) with
//! directories 0700 and files 0600, and reads that tell a complete registration from a missing
//! or partial one.

use std::fmt;
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{
    connector_config, parse_connector_config, Registration, StateError, ACTIVATION_FILE,
    FINGERPRINT_FILE, MANIFEST_FILE, REGKEY_FILE, STORE_DIR,
};

/// Largest Vault file we read; real ones are under 2 KiB.
const MAX_FILE: u64 = crate::state::MAX_ITEM as u64 + 1;

#[derive(Debug)]
pub enum VaultError {
    /// None of the three files exists: the Vault is empty (nothing registered yet).
    Empty { dir: PathBuf },
    /// Some files exist but they do not form a complete registration (missing, truncated,
    /// half-written, garbled).
    Incomplete { dir: PathBuf, error: StateError },
    /// Reading or writing failed.
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

impl fmt::Display for VaultError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VaultError::Empty { dir } => {
                write!(f, "the Vault {} holds no registration", dir.display())
            }
            VaultError::Incomplete { dir, error } => write!(
                f,
                "the Vault {} holds no complete registration: {error}",
                dir.display()
            ),
            VaultError::Io { op, path, source } => {
                write!(f, "cannot {op} {}: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for VaultError {}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> VaultError + 'a {
    move |source| VaultError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Reads a file; `Ok(None)` when it does not exist.
fn read_opt(path: &Path) -> Result<Option<Vec<u8>>, VaultError> {
    use std::io::Read;
    match fs::File::open(path) {
        Ok(f) => {
            let mut buf = Vec::new();
            f.take(MAX_FILE)
                .read_to_end(&mut buf)
                .map_err(io_err("read", path))?;
            Ok(Some(buf))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("read", path)(e)),
    }
}

/// The registration in the Vault under `base`, if it is complete.
pub fn read_vault(base: &Path) -> Result<Registration, VaultError> {
    let paths = [
        base.join(MANIFEST_FILE),
        base.join(REGKEY_FILE),
        base.join(FINGERPRINT_FILE),
    ];
    let mut files = Vec::with_capacity(3);
    for p in &paths {
        files.push(read_opt(p)?);
    }
    if files.iter().all(Option::is_none) {
        return Err(VaultError::Empty {
            dir: base.to_path_buf(),
        });
    }
    let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    let mut it = files.into_iter().map(Option::unwrap_or_default);
    let (m, r, f) = (
        it.next().unwrap_or_default(),
        it.next().unwrap_or_default(),
        it.next().unwrap_or_default(),
    );
    Registration::from_bytes(m, r, f, (&names[0], &names[1], &names[2])).map_err(|error| {
        VaultError::Incomplete {
            dir: base.to_path_buf(),
            error,
        }
    })
}

/// Creates `dir` with mode 0700, or tightens an existing one to 0700 when we may (an emptyDir
/// mount point is 0777 and may belong to someone else: then it is left as it is).
fn ensure_dir(dir: &Path) -> Result<(), VaultError> {
    match DirBuilder::new().mode(0o700).recursive(true).create(dir) {
        Ok(()) => {}
        Err(e) => return Err(io_err("create directory", dir)(e)),
    }
    let meta = fs::metadata(dir).map_err(io_err("stat", dir))?;
    if meta.permissions().mode() & 0o777 != 0o700 {
        if let Err(e) = fs::set_permissions(dir, fs::Permissions::from_mode(0o700)) {
            log::debug!("cannot set mode 0700 on {}: {e}", dir.display());
        }
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically: a 0600 temp file in the same directory, fsync, rename
/// over `path`, fsync of the directory. A reader sees the old or the new content, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), VaultError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        f.write_all(bytes).map_err(io_err("write", &tmp))?;
        f.sync_all().map_err(io_err("sync", &tmp))?;
        drop(f);
        fs::rename(&tmp, path).map_err(io_err("rename into place", path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Writes the three files of `reg` under `base` (each atomically, Manifest last). Our activation
/// marker is removed first, so a crash half-way never leaves a marker beside another
/// registration's files; write it again with [`write_vault_activation`].
pub fn write_vault(base: &Path, reg: &Registration) -> Result<(), VaultError> {
    ensure_dir(base)?;
    ensure_dir(&base.join(STORE_DIR))?;
    let marker = base.join(ACTIVATION_FILE);
    match fs::remove_file(&marker) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("remove", &marker)(e)),
    }
    write_atomic(&base.join(FINGERPRINT_FILE), reg.fingerprint())?;
    write_atomic(&base.join(REGKEY_FILE), reg.regkey())?;
    write_atomic(&base.join(MANIFEST_FILE), reg.manifest())?;
    Ok(())
}

/// Creates the Vault directories (0700) and checks that files can be written there, so a
/// registration is never made that could not be saved.
pub fn prepare_vault(base: &Path) -> Result<(), VaultError> {
    ensure_dir(base)?;
    ensure_dir(&base.join(STORE_DIR))?;
    let probe = base.join(STORE_DIR).join(".eks-connector-probe");
    write_atomic(&probe, b"")?;
    fs::remove_file(&probe).map_err(io_err("remove", &probe))
}

/// Records which activation the Vault's registration belongs to (the `connector-config` bytes).
pub fn write_vault_activation(base: &Path, activation_id: &str) -> Result<(), VaultError> {
    ensure_dir(base)?;
    write_atomic(
        &base.join(ACTIVATION_FILE),
        &connector_config(activation_id),
    )
}

/// The activation recorded by [`write_vault_activation`]; `None` when absent, empty or garbled.
pub fn read_vault_activation(base: &Path) -> Option<String> {
    let bytes = read_opt(&base.join(ACTIVATION_FILE)).ok()??;
    parse_connector_config(&bytes, ACTIVATION_FILE)
        .ok()
        .filter(|id| !id.is_empty())
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "vault-test-{tag}-{}-{}",
            std::process::id(),
            crate::random::uuid_v4().unwrap()
        ));
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn reg(instance: &str) -> Registration {
        super::super::fixtures::registration(instance)
    }

    #[test]
    fn write_then_read_round_trips_with_modes() {
        let root = tempdir("rt");
        let base = root.join("Vault");
        assert!(matches!(read_vault(&base), Err(VaultError::Empty { .. })));
        let r = reg("mi-1");
        write_vault(&base, &r).unwrap();
        assert_eq!(
            fs::read(base.join("Manifest")).unwrap(),
            MANIFEST.as_bytes()
        );
        assert_eq!(
            fs::read(base.join("Store/RegistrationKey")).unwrap(),
            regkey("mi-1").as_bytes()
        );
        assert_eq!(
            fs::read(base.join("Store/InstanceFingerprint")).unwrap(),
            FINGERPRINT.as_bytes()
        );
        for d in [&base, &base.join("Store")] {
            assert_eq!(fs::metadata(d).unwrap().mode() & 0o777, 0o700, "{d:?}");
        }
        for f in [
            "Manifest",
            "Store/RegistrationKey",
            "Store/InstanceFingerprint",
        ] {
            assert_eq!(
                fs::metadata(base.join(f)).unwrap().mode() & 0o777,
                0o600,
                "{f}"
            );
        }
        assert_eq!(read_vault(&base).unwrap(), r);
        prepare_vault(&base).unwrap();
        assert!(!base.join("Store/.eks-connector-probe").exists());
        assert!(prepare_vault(&base.join("Manifest").join("x")).is_err());
        // No temp files left behind.
        let names: Vec<_> = fs::read_dir(base.join("Store"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn partial_vaults_are_incomplete() {
        let root = tempdir("partial");
        write_vault(&root, &reg("mi-1")).unwrap();
        fs::write(root.join("Store/RegistrationKey"), &regkey("mi-1")[..40]).unwrap();
        match read_vault(&root) {
            Err(VaultError::Incomplete { error, .. }) => {
                assert!(error.item().ends_with("Store/RegistrationKey"), "{error}")
            }
            other => panic!("{other:?}"),
        }
        fs::remove_file(root.join("Store/RegistrationKey")).unwrap();
        assert!(matches!(
            read_vault(&root),
            Err(VaultError::Incomplete { .. })
        ));
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn activation_marker_is_removed_by_write_vault() {
        let root = tempdir("marker");
        assert_eq!(read_vault_activation(&root), None);
        write_vault_activation(&root, "a-1").unwrap();
        assert_eq!(
            fs::read(root.join(ACTIVATION_FILE)).unwrap(),
            br#"{"activationId":"a-1"}"#
        );
        assert_eq!(read_vault_activation(&root).as_deref(), Some("a-1"));
        write_vault(&root, &reg("mi-2")).unwrap();
        assert_eq!(read_vault_activation(&root), None);
        fs::remove_dir_all(root).unwrap();
    }
}
