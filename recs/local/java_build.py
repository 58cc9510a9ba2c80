"""Build the project's Java classes (jobs/java) into one jar, with no JDK.

    python -m recs.local.java_build .stack/jars/recs-flink.jar      (what `make setup` runs)

The compiler is Janino, the one Flink itself uses for the code its SQL planner generates: it ships in
``pyflink/lib/flink-table-runtime``, so a machine with only a Java runtime (``make java`` installs
``openjdk-17-jre-headless``) builds the jar too. It runs in PyFlink's gateway JVM, whose classpath is
the Flink jars the classes compile against. Janino reads Java with raw types (no generics checks), which
is how the sources are written. The jar's entries carry a fixed timestamp, so a build is reproducible.
"""

from __future__ import annotations

import sys
import tempfile
import zipfile
from pathlib import Path

from conf.settings import PROJECT_ROOT

JAVA_DIR = PROJECT_ROOT / "jobs" / "java"
FIXED_TIME = (2020, 1, 1, 0, 0, 0)


def sources() -> list[Path]:
    return sorted(JAVA_DIR.rglob("*.java"))


def build(out: Path) -> list[str]:
    """Compile every source under jobs/java into the jar ``out``; returns the class entries written.
    A compile error raises (py4j carries Janino's message: file, line, column, what is wrong)."""
    from pyflink.java_gateway import get_gateway

    gateway = get_gateway()
    jvm = gateway.jvm
    files = sources()
    if not files:
        raise FileNotFoundError(f"no Java sources under {JAVA_DIR}")
    with tempfile.TemporaryDirectory() as tmp:
        j_files = gateway.new_array(jvm.java.io.File, len(files))
        for i, f in enumerate(files):
            j_files[i] = jvm.java.io.File(str(f))
        compiler = jvm.org.codehaus.janino.Compiler()
        compiler.setSourcePath(gateway.new_array(jvm.java.io.File, 0))
        compiler.setDestinationDirectory(jvm.java.io.File(tmp), False)
        compiler.setDebugSource(True)
        compiler.setDebugLines(True)
        compiler.setDebugVars(True)
        compiler.compile(j_files)
        classes = sorted(p for p in Path(tmp).rglob("*.class"))
        if not classes:
            raise RuntimeError(f"the compiler wrote no class files for {[str(f) for f in files]}")
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_suffix(".jar.partial")
        entries = []
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as jar:
            manifest = zipfile.ZipInfo("META-INF/MANIFEST.MF", FIXED_TIME)
            jar.writestr(manifest, "Manifest-Version: 1.0\r\nCreated-By: recs.local.java_build (Janino)\r\n\r\n")
            for c in classes:
                name = c.relative_to(tmp).as_posix()
                jar.writestr(zipfile.ZipInfo(name, FIXED_TIME), c.read_bytes())
                entries.append(name)
        partial.replace(out)
    return entries


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python -m recs.local.java_build OUT.jar")
    out = Path(sys.argv[1])
    entries = build(out)
    where = JAVA_DIR.relative_to(PROJECT_ROOT)
    print(f"built {out} ({len(entries)} classes from {len(sources())} sources under {where})")


if __name__ == "__main__":
    main()
