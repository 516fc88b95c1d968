-- citrusd binaries the engine serves (src/engine/releases.rs): one row per file, named by its
-- SHA-256 (hex) under the engine's releases_dir. Newest per arch is what cloud-init installs.
CREATE TABLE releases (
    sha256 TEXT PRIMARY KEY,
    version TEXT NOT NULL,
    arch TEXT NOT NULL,
    size BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX releases_arch_created ON releases (arch, created_at);
