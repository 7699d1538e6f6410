"""OFF meshes (the ModelNet file format) and surface sampling: the file side of `perceiver.data.points`.

`read_off` reads ASCII OFF files as written by ModelNet, Blender, MeshLab, trimesh, CloudCompare or by hand:
comments (`#` to the end of a line, also before the header and in any encoding), blank lines, LF / CRLF / CR line
endings, a UTF-8 byte order mark, colour / normal columns (COFF, NOFF, ...), polygons (fan-triangulated) and
ModelNet's header quirk "OFF490 518 0". A file with vertices and no faces is a point cloud (`mesh_points` then
samples its vertices rather than a surface).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np

OFF_HEADER = re.compile(r"^(ST)?C?N?4?n?OFF")

__all__ = [
    "OFF_HEADER",
    "check_mesh",
    "check_off_header",
    "load_off_points",
    "mesh_points",
    "normalize_unit_sphere",
    "read_off",
    "sample_surface",
    "write_off",
]


def _decode(raw: bytes) -> str:
    """OFF bytes as text: BOM dropped, any byte kept (latin-1: bytes above 127 can only sit in comments of a valid
    file, elsewhere they fail as numbers), line endings made `\\n`."""
    text = raw.removeprefix(b"\xef\xbb\xbf").decode("latin-1")
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


def _strip_comments(text: str) -> str:
    return "\n".join(ln.split("#", 1)[0] for ln in text.split("\n")) if "#" in text else text


def read_off(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an OFF mesh: vertices float32 `(V, 3)` and triangles int64 `(F, 3)` (polygons fan-triangulated;
    `(0, 3)` for a vertex-only file, i.e. a point cloud).

    Handles comments, blank lines, any line endings, colour / normal columns (COFF, NOFF) and ModelNet's header
    quirk where the counts follow "OFF" on the first line ("OFF490 518 0"). Raises `FileNotFoundError` for a
    missing file and `ValueError` naming the file for anything else (bad header, binary OFF, truncated,
    non-numeric, index out of range, non-finite coordinates).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"OFF file not found: {path}")
    text = _strip_comments(_decode(path.read_bytes()))
    head, _, body = text.lstrip().partition("\n")
    if not (m := OFF_HEADER.match(head)):
        raise ValueError(f"corrupt OFF file {path}: first line must start with 'OFF', got {head[:40]!r}")
    counts = head[m.end() :].split()
    if counts[:1] == ["BINARY"]:
        raise ValueError(f"OFF file {path} is binary ('OFF BINARY'); only ASCII OFF is read (convert it first)")
    if not counts:
        head, _, body = body.lstrip().partition("\n")
        counts = head.split()
    try:
        nv, nf = int(counts[0]), int(counts[1])
    except (IndexError, ValueError):
        raise ValueError(
            f"corrupt OFF file {path}: expected 'vertex_count face_count [edge_count]', got {counts}"
        ) from None
    if nv < 0 or nf < 0:
        raise ValueError(f"corrupt OFF file {path}: negative counts {nv}, {nf}")
    mesh = _parse_body_fast(body, nv, nf)
    if mesh is None:  # irregular or broken file: line by line, with a precise message
        lines = [ln.strip() for ln in body.splitlines()]
        lines = [ln for ln in lines if ln]
        if len(lines) < nv + nf:
            raise ValueError(
                f"corrupt OFF file {path}: truncated, expected {nv} vertex and {nf} face lines, found {len(lines)}"
            )
        try:
            mesh = _parse_rows(lines[:nv], 3, float), _parse_faces(lines[nv : nv + nf])
        except ValueError as e:
            raise ValueError(f"corrupt OFF file {path}: {e}") from None
    vertices, faces = mesh
    if faces.size and (faces.min() < 0 or faces.max() >= nv):
        raise ValueError(f"corrupt OFF file {path}: face index out of range 0..{nv - 1}")
    if not np.isfinite(vertices).all():
        raise ValueError(f"corrupt OFF file {path}: non-finite vertex coordinates")
    return vertices.astype(np.float32), faces


def _parse_body_fast(body: str, nv: int, nf: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Vectorised parse when every vertex line has the same columns and every face is a triangle with the same
    columns (the usual case); None when that does not hold or anything looks off."""
    body = body.lstrip()
    first_vertex = body.partition("\n")[0].split() if nv else []
    kv = len(first_vertex)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy warns (instead of raising) on text it cannot parse
        try:
            numbers = np.fromstring(body, dtype=np.float64, sep=" ")
        except (ValueError, DeprecationWarning):
            return None
    if nv and kv < 3:
        return None
    rest = numbers[nv * kv :]
    if nf == 0:
        return (numbers[: nv * kv].reshape(nv, kv)[:, :3], np.zeros((0, 3), dtype=np.int64)) if rest.size == 0 else None
    if rest.size == 0 or rest.size % nf or rest[0] != 3:
        return None
    faces = rest.reshape(nf, -1)
    if faces.shape[1] < 4 or (faces[:, 0] != 3).any() or (faces[:, 1:4] != np.round(faces[:, 1:4])).any():
        return None
    return numbers[: nv * kv].reshape(nv, kv)[:, :3], faces[:, 1:4].astype(np.int64)


def _parse_rows(lines: list[str], width: int, dtype: type) -> np.ndarray:
    """First `width` numbers of every line as `(len(lines), width)`; ValueError for short or non-numeric rows."""
    rows = [ln.split() for ln in lines]
    if rows and len({len(r) for r in rows}) == 1 and len(rows[0]) >= width:  # fast path: uniform rows
        return np.array(rows, dtype=dtype)[:, :width]
    for r in rows:
        if len(r) < width:
            raise ValueError(f"expected >= {width} numbers per line, got {' '.join(r)!r}")
    return np.array([r[:width] for r in rows], dtype=dtype).reshape(len(rows), width)


def _parse_faces(lines: list[str]) -> np.ndarray:
    """Triangles `(F', 3)` of OFF face lines `k i1 .. ik [colour]`, polygons fan-triangulated."""
    if not lines:
        return np.zeros((0, 3), dtype=np.int64)
    rows = [ln.split() for ln in lines]
    if len({len(r) for r in rows}) == 1 and len(rows[0]) >= 4:  # fast path: all triangles
        arr = np.array(rows)[:, :4].astype(np.int64)
        if (arr[:, 0] == 3).all():
            return arr[:, 1:4]
    tris: list[list[int]] = []
    for r in rows:
        k = int(r[0])
        if k < 3 or len(r) < k + 1:
            raise ValueError(f"bad face line {' '.join(r)!r}")
        idx = [int(t) for t in r[1 : k + 1]]
        tris.extend([idx[0], idx[j], idx[j + 1]] for j in range(1, k - 1))
    return np.array(tris, dtype=np.int64)


def write_off(path: str | Path, vertices: np.ndarray, faces: np.ndarray, modelnet_quirk: bool = False) -> None:
    """Write a triangle mesh as OFF; `modelnet_quirk=True` writes the counts on the "OFF" line ("OFF8 12 0")."""
    head = f"OFF{len(vertices)} {len(faces)} 0" if modelnet_quirk else f"OFF\n{len(vertices)} {len(faces)} 0"
    body = [" ".join(f"{x:.6f}" for x in v) for v in vertices] + [
        "3 " + " ".join(str(int(i)) for i in f) for f in faces
    ]
    Path(path).write_text("\n".join([head, *body]) + "\n", encoding="ascii")


def check_off_header(path: Path) -> None:
    """`ValueError` naming `path` unless its first line that is not blank or a comment starts with "OFF"."""
    with open(path, "rb") as f:
        text = _strip_comments(_decode(f.read(1 << 16)))
    head = text.lstrip().partition("\n")[0]
    if not OFF_HEADER.match(head):
        raise ValueError(f"corrupt OFF file {path}: first line must start with 'OFF', got {head[:40]!r}")


def _face_areas(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    tri = np.asarray(vertices, dtype=np.float64)[faces]  # (F, 3, 3)
    return tri, 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)


def sample_surface(vertices: np.ndarray, faces: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` points `(n, 3)` uniformly on the surface: triangles chosen by area, uniform barycentric coordinates."""
    tri, areas = _face_areas(vertices, faces)
    total = areas.sum()
    if len(faces) == 0 or not np.isfinite(total) or total <= 0:
        raise ValueError("mesh has no faces with positive area")
    pick = rng.choice(len(faces), size=n, p=areas / total)
    r1, r2 = np.sqrt(rng.random((n, 1))), rng.random((n, 1))
    a, b, c = tri[pick, 0], tri[pick, 1], tri[pick, 2]
    return (1 - r1) * a + r1 * (1 - r2) * b + r1 * r2 * c


def normalize_unit_sphere(points: np.ndarray) -> np.ndarray:
    """Centre `(P, 3)` at its mean and scale so the farthest point has norm 1."""
    points = points - points.mean(axis=0)
    radius = np.linalg.norm(points, axis=1).max()
    return points / radius if radius > 0 else points


def mesh_points(vertices: np.ndarray, faces: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """`(P, 3)` float64 points of a mesh: `n` surface samples (`sample_surface`); for a vertex-only mesh (a point
    cloud) `n` of its vertices drawn without replacement, or all of them in file order if it has at most `n`
    (P < n then: the batch pads the cloud and its mask marks the real points). `ValueError` for a mesh with faces
    of zero total area or no vertices."""
    if len(faces):
        return sample_surface(vertices, faces, n, rng)
    if len(vertices) == 0:
        raise ValueError("mesh has no vertices")
    vertices = np.asarray(vertices, dtype=np.float64)
    return vertices[np.sort(rng.choice(len(vertices), size=n, replace=False))] if len(vertices) > n else vertices


def load_off_points(path: str | Path, num_points: int, rng: np.random.Generator | int = 0) -> np.ndarray:
    """The cloud `ModelNetDataModule` makes of an OFF file: `mesh_points` (`num_points` surface samples, or the
    vertices of a vertex-only file) centred and scaled into the unit sphere, float64 `(P, 3)`, P <= num_points;
    `rng` a generator or a seed. `FileNotFoundError` / `ValueError` naming the file (e.g. for `perceiver predict`)."""
    vertices, faces = read_off(path)
    rng = np.random.default_rng(rng) if isinstance(rng, int) else rng
    try:
        points = mesh_points(vertices, faces, num_points, rng)
    except ValueError as e:
        raise ValueError(f"corrupt OFF file {path}: {e}") from None
    return normalize_unit_sphere(points)


def check_mesh(path: Path) -> None:
    """Read `path` (`read_off`) and check that points can be drawn from it (`mesh_points`); `ValueError` naming the
    file otherwise, so `ModelNetDataModule.setup()` stops before training rather than in the middle of an epoch."""
    vertices, faces = read_off(path)
    if len(faces):
        total = _face_areas(vertices, faces)[1].sum()
        if not (np.isfinite(total) and total > 0):
            raise ValueError(f"corrupt OFF file {path}: its {len(faces)} faces have no area (degenerate mesh)")
    elif len(vertices) == 0:
        raise ValueError(f"corrupt OFF file {path}: no vertices and no faces")
