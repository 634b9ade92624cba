"""The build matrix: its file, cells, slots and stages; `build --matrix`; the CI definitions
it emits, checked by the validators operators use (GitHub's workflow schema as
check-jsonschema vendors it, Kubernetes' published schemas through kubernetes-validate); and
what `cache prune --registry` keeps (on parsed manifests; tests/registry runs it for real)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from assembler.cli import config_of, expand_matrix, main
from assembler.errors import UsageError
from assembler.fleet import artifact, emit
from assembler.fleet.matrix import Matrix, Planned, load, pick, plan, stages, take_options
from assembler.fleet.prune import Found, choose

BIN = Path(sys.executable).parent

FOUR = """
guest-os = "debian"
releases = ["bookworm"]
modes = ["production", "dev"]
formats = ["qcow2", "raw"]
output-dir = "out"
cache-registry = "127.0.0.1:5000/fleet/layers"
args = ["--size", "6G"]
"""


def matrix_file(tmp_path: Path, text: str = FOUR) -> Path:
    path = tmp_path / "matrix.toml"
    path.write_text(text)
    return path


def test_cells_have_stable_ids_and_their_build_arguments(tmp_path: Path) -> None:
    m = load(matrix_file(tmp_path))
    ids = [c.id for c in m.cells()]
    assert ids == [
        "bookworm-production-none-qcow2", "bookworm-production-none-raw",
        "bookworm-dev-none-qcow2", "bookworm-dev-none-raw",
    ]  # fmt: skip
    cell = m.cell("bookworm-dev-none-raw")
    assert cell.output == "out/bookworm-dev-none-raw.raw"
    assert list(cell.argv) == [
        "--guest-os", "debian", "--release", "bookworm", "--format", "raw", "--dev-mode",
        "-o", "out/bookworm-dev-none-raw.raw", "--cache-registry", "127.0.0.1:5000/fleet/layers",
        "--size", "6G",
    ]  # fmt: skip
    with pytest.raises(UsageError, match="no cell 'bookworm-x'"):
        m.cell("bookworm-x")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("releases = 'bookworm'", "releases is not a list"),
        ("modes = ['production']", "releases is missing"),
        ("releases = ['bookworm']\nmodes = ['staging']", "mode 'staging'"),
        ("releases = ['bookworm']\nformats = ['iso']", "format 'iso'"),
        ("releases = ['bookworm']\nrelease = 'x'", "unknown field 'release'"),
        ("releases = ['bookworm', 'bookworm']", "names one twice"),
        ("releases = ['bookworm']\n[datastores]\nPg = []", "datastore name 'Pg'"),
        ("releases = [", "is not TOML"),
    ],
)
def test_a_bad_matrix_file_is_one_usage_error(tmp_path: Path, text: str, says: str) -> None:
    with pytest.raises(UsageError, match=says):
        load(matrix_file(tmp_path, text))


def test_slots_share_what_cells_share_and_stages_order_them(tmp_path: Path) -> None:
    planned = plan(load(matrix_file(tmp_path)), config_of)
    slot = {p.cell.id: dict(p.slots) for p in planned}
    prod_q, prod_r = slot["bookworm-production-none-qcow2"], slot["bookworm-production-none-raw"]
    dev_q = slot["bookworm-dev-none-qcow2"]
    # The format is not a layer's business: both production cells are one chain.
    assert prod_q == prod_r and all(prod_q.values())
    # Dev shares the system and config layers; its agent layer holds a key: never shared.
    assert dev_q["system"] == prod_q["system"] and dev_q["config"] == prod_q["config"]
    assert dev_q["agent"] is None and dev_q["agent"] != prod_q["agent"]
    assert [p.stage for p in planned] == [1, 2, 2, 2]


def test_another_release_or_a_root_password_is_another_slot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    two = FOUR.replace('releases = ["bookworm"]', 'releases = ["bookworm", "trixie"]')
    planned = plan(load(matrix_file(tmp_path, two)), config_of)
    systems = {p.cell.release: dict(p.slots)["system"] for p in planned}
    assert systems["bookworm"] != systems["trixie"]
    # Two chains with nothing in common: their first cells run side by side.
    assert [
        p.stage for p in planned if p.cell.format == "qcow2" and p.cell.mode == "production"
    ] == [1, 1]
    monkeypatch.setenv("TROVE_ROOT_PASSWORD", "s3cret-root")
    secret = plan(load(matrix_file(tmp_path)), config_of)
    assert dict(secret[0].slots)["config"] is None and dict(secret[0].slots)["agent"] is None


def test_a_cell_waits_for_the_earliest_cell_building_a_slot_it_shares() -> None:
    def cell(name: str, *slots: str | None) -> Planned:
        from assembler.fleet.matrix import Cell

        c = Cell(name, "r", "production", "none", "qcow2", (), "")
        return Planned(c, tuple((f"l{i}", s) for i, s in enumerate(slots)))

    staged = stages([
        cell("a", "s", "c1", "x"), cell("b", "s", "c1", "y"), cell("c", "s", "c2", None),
        cell("d", "s", "c2", "z"), cell("e", "t", "c3"),
    ])  # fmt: skip
    # b and c need a's system; d needs c's config too; e shares nothing.
    assert [p.stage for p in staged] == [1, 2, 2, 3, 1]


def test_build_matrix_cell_becomes_the_cell_s_arguments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = matrix_file(tmp_path)
    args = expand_matrix(["build", "--matrix", str(path), "--cell=bookworm-dev-none-qcow2", "-v"])
    assert args[0] == "build" and args[-1] == "-v"
    assert args[1:-1] == list(load(path).cell("bookworm-dev-none-qcow2").argv)
    # An Indexed Job's pod: its stage and index, the index from the Job's environment.
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "2")
    args = expand_matrix(["build", "--matrix", str(path), "--stage", "2"])
    assert "bookworm-dev-none-raw.raw" in " ".join(args)
    with pytest.raises(UsageError, match="stage 2 has 3 cells: no index 3"):
        expand_matrix(["build", "--matrix", str(path), "--stage", "2", "--cell-index", "3"])
    assert expand_matrix(["fetch", "--matrix", "x"]) == ["fetch", "--matrix", "x"]


def test_bad_matrix_usage_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["build", "--matrix", str(tmp_path / "none.toml"), "--cell", "x"]) == 2
    assert main(["build", "--matrix", str(matrix_file(tmp_path))]) == 2
    assert main(["matrix", str(matrix_file(tmp_path, "releases = 1"))]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("error: ") for line in lines)
    assert "does not exist" in lines[0] and "--cell ID" in lines[1]


def test_take_options_reads_both_spellings() -> None:
    rest, got = take_options(["-a", "--x", "1", "--y=2", "b"], ("--x", "--y"))
    assert rest == ["-a", "b"] and got == {"--x": "1", "--y": "2"}
    with pytest.raises(UsageError):
        take_options(["--x"], ("--x",))


def test_pick_takes_numbers() -> None:
    with pytest.raises(UsageError, match="are numbers"):
        pick([], "one", "0")


# ----- emitted CI definitions ----------------------------------------------------------------


def planned_four(tmp_path: Path) -> tuple[Matrix, list[Planned]]:
    m = load(matrix_file(tmp_path))
    return m, plan(m, config_of)


def check_jsonschema(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BIN / "check-jsonschema", "--builtin-schema", "vendor.github-workflows", path],
        capture_output=True, text=True, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("kind", ["github", "github-run"])
def test_the_github_workflows_pass_github_s_schema(tmp_path: Path, kind: str) -> None:
    m, planned = planned_four(tmp_path)
    text = emit.EMITTERS[kind](m, planned)
    doc = yaml.safe_load(text)
    assert list(doc["jobs"]) == ["plan", "stage-1", "stage-2"]
    assert doc["jobs"]["stage-2"]["needs"] == ["plan", "stage-1"]
    assert doc["jobs"]["stage-2"]["strategy"]["matrix"] == (
        "${{ fromJSON(needs.plan.outputs.stage-2) }}"
    )
    uses = [s for job in doc["jobs"].values() for s in job["steps"] if "uses" in s]
    assert (kind == "github-run") == (uses == [])  # run: steps only, for self-hosted runners
    out = tmp_path / f"{kind}.yaml"
    out.write_text(text)
    result = check_jsonschema(out)
    assert result.returncode == 0, result.stdout + result.stderr
    # The validator does fail: a job without runs-on or steps is refused.
    del doc["jobs"]["stage-1"]["runs-on"], doc["jobs"]["stage-1"]["steps"]
    out.write_text(yaml.safe_dump(doc))
    assert check_jsonschema(out).returncode != 0


def test_the_generator_job_s_outputs_are_each_stage_s_cells(tmp_path: Path) -> None:
    m, planned = planned_four(tmp_path)
    lines = emit.github_output(m, planned).splitlines()
    assert [line.split("=", 1)[0] for line in lines] == ["stage-1", "stage-2"]
    assert json.loads(lines[1].split("=", 1)[1]) == {
        "cell": ["bookworm-production-none-raw", "bookworm-dev-none-qcow2", "bookworm-dev-none-raw"]
    }


def kubernetes_validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BIN / "kubernetes-validate", "--strict", path],
                          capture_output=True, text=True, check=False)  # fmt: skip


def test_the_kubernetes_jobs_pass_kubernetes_schemas(tmp_path: Path) -> None:
    m, planned = planned_four(tmp_path)
    text = emit.kubernetes(m, planned)
    docs = list(yaml.safe_load_all(text))
    assert [d["kind"] for d in docs] == ["ConfigMap", "Job", "Job"]
    assert docs[0]["data"]["matrix.toml"] == m.path.read_text()
    job = docs[2]["spec"]
    assert job["completionMode"] == "Indexed" and job["completions"] == 3
    command = job["template"]["spec"]["containers"][0]["command"]
    assert command[-4:] == ["--matrix", "/etc/assembler/matrix.toml", "--stage", "2"]
    out = tmp_path / "k8s.yaml"
    out.write_text(text)
    result = kubernetes_validate(out)
    assert result.returncode == 0, result.stdout + result.stderr
    docs[1]["spec"]["completionMode"] = "Sideways"
    docs[2]["spec"]["parallelism"] = "two"
    out.write_text(yaml.safe_dump_all(docs))
    assert kubernetes_validate(out).returncode != 0


def test_the_zuul_jobs_depend_on_the_cells_building_their_layers(tmp_path: Path) -> None:
    m, planned = planned_four(tmp_path)
    config, playbook = list(yaml.safe_load_all(emit.zuul(m, planned)))
    jobs = {d["job"]["name"]: d["job"] for d in config if "job" in d}
    first = "trove-image-bookworm-production-none-qcow2"
    assert "dependencies" not in jobs[first]
    for other in ("production-none-raw", "dev-none-qcow2", "dev-none-raw"):
        assert jobs[f"trove-image-bookworm-{other}"]["dependencies"] == [first]
    assert config[-1]["project"]["periodic"]["jobs"] == [
        j for j in jobs if j != "trove-image-build"
    ]
    report = playbook[0]["tasks"][-1]["zuul_return"]["data"]["zuul"]["artifacts"][0]
    assert set(report["metadata"]) == {"type", "image_name", "format", "sha256", "md5sum"}
    assert report["metadata"]["type"] == "zuul_image"


# ----- what prune keeps ----------------------------------------------------------------------


def found(key: str, slot: str, created: float, parent: str = "", kind: str = "layer") -> Found:
    notes = {artifact.KEY: key, artifact.SLOT: slot, artifact.PARENT: parent,
             artifact.CREATED: artifact.iso(created)}  # fmt: skip
    kind_type = artifact.BASE_ARTIFACT if kind == "base" else artifact.LAYER_ARTIFACT
    return Found(key, "sha256:" + key, artifact.Artifact(kind_type, notes, ()))


def test_prune_keeps_the_newest_of_each_current_slot_and_what_they_lie_on() -> None:
    listing: list[Any] = [
        found("sys1", "S", 1), found("sys2", "S", 2), found("sys3", "S", 3),
        found("cfgA", "C", 1, "sys1.g"), found("cfgB", "C", 5, "sys1.g"),
        found("old", "GONE", 9), found("r1", "", 1, kind="base"), found("r2", "", 1, kind="base"),
    ]  # fmt: skip
    gone = {f.tag for f in choose(listing, {"S", "C"}, {"r1"}, keep=1)}
    # sys3 is S's newest; cfgB C's newest, and it lies on sys1, which stays for it.
    assert gone == {"sys2", "cfgA", "old", "r2"}
    assert {f.tag for f in choose(listing, {"S", "C"}, {"r1", "r2"}, keep=2)} == {"old"}


ZUUL_PYTHON = Path(__file__).resolve().parents[2] / ".venv-zuul" / "bin" / "python"
# Zuul's own schemas: a job as its JobParser reads one, a project as its ProjectParser does
# (the parser's context is only needed for what the schema leaves to later checks).
ZUUL_CHECK = """
import sys, yaml
from zuul.configloader import JobParser, ProjectParser
config = next(yaml.safe_load_all(open(sys.argv[1])))
project = ProjectParser.__new__(ProjectParser)
project.pcontext = None
for item in config:
    if "job" in item:
        JobParser.schema(item["job"])
    else:
        project.getSchema()(item["project"])
"""


def zuul_check(path: Path) -> subprocess.CompletedProcess[str]:
    assert ZUUL_PYTHON.exists(), "Zuul's venv is missing: run `make setup`"
    return subprocess.run([ZUUL_PYTHON, "-c", ZUUL_CHECK, path],
                          capture_output=True, text=True, check=False)  # fmt: skip


def test_the_zuul_jobs_pass_zuul_s_own_schemas(tmp_path: Path) -> None:
    m, planned = planned_four(tmp_path)
    text = emit.zuul(m, planned)
    out = tmp_path / "zuul.yaml"
    out.write_text(text)
    result = zuul_check(out)
    assert result.returncode == 0, result.stderr[-2000:]
    config = next(yaml.safe_load_all(text))
    config[1]["job"]["dependencies"] = "trove-image-x"  # a list, in Zuul's schema
    config[2]["job"]["timeout"] = "long"
    out.write_text(yaml.safe_dump(config))
    refused = zuul_check(out)
    assert refused.returncode != 0 and "MultipleInvalid" in refused.stderr
