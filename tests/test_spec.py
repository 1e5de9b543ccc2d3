"""Schema errors are caught on the login node and name the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from skinhpc.config import SpecError, load_spec


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def job(tmp_path: Path, ham_root: Path):
    """A valid minimal job file, extended by each test."""

    def make(extra: str = "", name: str = "job.yaml") -> Path:
        body = (
            "name: t\n"
            f"data:\n  sources: [{{kind: ham10000, root: {ham_root}, images: [images]}}]\n"
            + extra
        )
        return write(tmp_path / name, body)

    return make


def test_valid_job_loads(job):
    spec = load_spec(job("seeds: [1, 2]\n"))
    assert spec.seeds == [1, 2] and spec.name == "t"


def test_unknown_key_names_file_key_and_closest(job):
    path = job("train:\n  batch_sise: 8\n")
    with pytest.raises(SpecError) as e:
        load_spec(path)
    msg = str(e.value)
    assert str(path) in msg and "train.batch_sise" in msg and "batch_size" in msg


def test_wrong_type_names_key_and_expected_type(job):
    path = job("train:\n  batch_size: many\n")
    with pytest.raises(SpecError) as e:
        load_spec(path)
    assert str(path) in str(e.value) and "train.batch_size" in str(e.value)
    assert "integer" in str(e.value)


def test_bad_literal_suggests_choice(job):
    with pytest.raises(SpecError, match=r"cluster\.executor.*slurm"):
        load_spec(job("cluster: {executor: slurmm}\n"))


def test_missing_data_is_refused_at_launch_not_at_load(tmp_path: Path):
    """Validation is pure (a spec loads without its data); the launch's environment check refuses
    it, naming the file, the key, the folder and the download command."""
    from skinhpc.orchestrate.checks import check_environment

    path = write(tmp_path / "j.yaml", "name: t\ndata:\n  sources: [{kind: ham10000, root: nowhere}]\n")
    spec = load_spec(path)
    with pytest.raises(SpecError) as e:
        check_environment(spec, str(path))
    msg = str(e.value)
    assert str(path) in msg and "data.sources[0].root" in msg and str(tmp_path / "nowhere") in msg
    assert f"skinhpc data download ham10000 --to {tmp_path / 'nowhere'}" in msg
    # an ISIC source is told its own download, not HAM10000's
    isic = load_spec(write(tmp_path / "k.yaml", "name: t\ndata:\n  sources: [{kind: isic2019, root: nowhere}]\n"))
    with pytest.raises(SpecError, match=r"skinhpc data download isic2019 --to .*configs/data/isic2019.yaml"):
        check_environment(isic, "k.yaml")


def test_every_downloadable_source_kind_is_named_by_the_launch_check() -> None:
    from skinhpc.data.download import DATASETS
    from skinhpc.orchestrate.checks import DOWNLOADABLE

    assert set(DOWNLOADABLE) == set(DATASETS)


def test_missing_weights_and_unknown_timm_model_refused_at_launch(job, tmp_path: Path):
    from skinhpc.orchestrate.checks import check_environment

    spec = load_spec(job(), ["model.pretrained=file", "model.weights=absent.pth"])
    with pytest.raises(SpecError, match=r"model\.weights.*absent\.pth"):
        check_environment(spec)
    spec = load_spec(job(), ["model.name=resnet10x", "model.pretrained=none"])
    with pytest.raises(SpecError, match=r"model\.name.*resnet10x.*not a timm model"):
        check_environment(spec)
    check_environment(load_spec(job(), ["model.name=resnet10t", "model.pretrained=none"]))


def test_include_cycle_named(tmp_path: Path):
    a = write(tmp_path / "a.yaml", "include: [b.yaml]\nname: t\n")
    write(tmp_path / "b.yaml", "include: [a.yaml]\n")
    with pytest.raises(SpecError) as e:
        load_spec(a)
    assert "include cycle" in str(e.value) and "a.yaml" in str(e.value)


def test_missing_include_named(tmp_path: Path):
    a = write(tmp_path / "a.yaml", "include: [nothere.yaml]\nname: t\n")
    with pytest.raises(SpecError) as e:
        load_spec(a)
    assert "nothere.yaml" in str(e.value) and "not found" in str(e.value)


def test_error_in_included_fragment_names_fragment(tmp_path: Path, ham_root: Path):
    write(tmp_path / "frag.yaml", "model: {nam: resnet10t}\n")
    a = write(tmp_path / "a.yaml", f"include: [frag.yaml]\nname: t\ndata:\n  sources: [{{kind: ham10000, root: {ham_root}}}]\n")
    with pytest.raises(SpecError) as e:
        load_spec(a)
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path / 'frag.yaml'}: model.nam: unknown key"), msg
    assert "did you mean 'name'" in msg and f"included from {a}" in msg


def test_bad_value_in_nested_fragment_names_that_fragment(tmp_path: Path, ham_root: Path):
    """Two levels of includes; the job file overrides other keys of the same section."""
    (tmp_path / "configs").mkdir()
    write(tmp_path / "configs" / "inner.yaml", "train: {batch_size: 0, augment: 0.1}\n")
    write(tmp_path / "configs" / "outer.yaml", "include: [inner.yaml]\ntrain: {augment: 0.2}\n")
    a = write(tmp_path / "a.yaml", f"include: [configs/outer.yaml]\nname: t\ntrain: {{grad_clip: 0.5}}\n"
                                   f"data:\n  sources: [{{kind: ham10000, root: {ham_root}}}]\n")
    with pytest.raises(SpecError) as e:
        load_spec(a)
    assert str(e.value).startswith(f"{tmp_path / 'configs' / 'inner.yaml'}: train.batch_size: must be >= 1")
    # the job file's own key, replacing the fragment's, is blamed on the job file
    write(tmp_path / "configs" / "inner.yaml", "train: {batch_size: 8, augment: 0.1}\n")
    assert load_spec(a).train.augment == pytest.approx(0.2)
    bad = write(tmp_path / "b.yaml", a.read_text().replace("grad_clip: 0.5", "grad_clip: -1"))
    with pytest.raises(SpecError) as e:
        load_spec(bad)
    assert str(e.value).startswith(f"{bad}: train.grad_clip: must be >= 0"), str(e.value)


def test_override_of_unknown_key_named(job):
    path = job()
    with pytest.raises(SpecError) as e:
        load_spec(path, ["train.epochz=3"])
    msg = str(e.value)
    assert "train.epochz" in msg and "epochz" in msg


def test_override_wrong_type_named(job):
    path = job()
    with pytest.raises(SpecError) as e:
        load_spec(path, ["cluster.gpus_per_member=two"])
    assert str(path) in str(e.value) and "cluster.gpus_per_member" in str(e.value)


def test_override_applies(job):
    spec = load_spec(job(), ["train.batch_size=7", "seeds=[3,4]"])
    assert spec.train.batch_size == 7 and spec.seeds == [3, 4]


def test_unknown_sweep_key_named(job):
    with pytest.raises(SpecError) as e:
        load_spec(job("sweep:\n  grid: {train.wieght_decay: [0.1]}\n"))
    assert "train.wieght_decay" in str(e.value) and "weight_decay" in str(e.value)


def test_invalid_yaml_named(tmp_path: Path):
    path = write(tmp_path / "bad.yaml", "name: [unclosed\n")
    with pytest.raises(SpecError) as e:
        load_spec(path)
    assert str(path) in str(e.value) and "invalid YAML" in str(e.value)


def test_exponent_floats_without_a_dot_are_numbers(job):
    """PyYAML reads YAML 1.1, where ``1e-4`` is a string; a learning rate written the way
    everyone writes it must load as a number, in the file and in an override."""
    spec = load_spec(job("train:\n  weight_decay: 5e-2\n"), ["train.phases.0.lr=3e-4"])
    assert spec.train.weight_decay == pytest.approx(0.05)
    assert spec.train.phases[0].lr == pytest.approx(3e-4)
    # still a string where a string is meant
    path = job()
    path.write_text(path.read_text().replace("name: t\n", "name: 1e\n"))  # a key once: twice is refused
    assert load_spec(path).name == "1e"


@pytest.mark.parametrize(("extra", "key", "says"), [
    ("train:\n  phases: [{name: all, epochs: 0}]\n", "train.phases[0].epochs", ">= 1"),
    ("train:\n  batch_size: 0\n", "train.batch_size", ">= 1"),
    ("train:\n  phases: [{name: all, lr: 0}]\n", "train.phases[0].lr", "> 0"),
    ("train:\n  phases: []\n", "train.phases", "must not be empty"),
    ("seeds: []\n", "seeds", "must not be empty"),
    ("  split: {fractions: [0.5, 0.5]}\n", "data.split.fractions", "exactly 3 items"),  # inside data:
    ("reduce: {gate: 1.0}\n", "reduce.gate", "< 1"),
    ("reduce: {bootstrap: -1}\n", "reduce.bootstrap", ">= 0"),
    ("reduce: {tta: [identity, hflipp]}\n", "reduce.tta[1]", "did you mean 'hflip'"),
    ("reduce: {min_members: 3}\nseeds: [1, 2]\n", "reduce.min_members", "more than the 2 member(s)"),
    ("cluster: {time_min: 1}\n", "cluster.time_min", "checkpoint signal margin"),
    ("preprocess: {workers: -1}\n", "preprocess.workers", ">= 0"),
])
def test_bounds_are_enforced_naming_the_key(job, extra: str, key: str, says: str):
    with pytest.raises(SpecError) as e:
        load_spec(job(extra))
    assert f": {key}: " in str(e.value) and says in str(e.value), str(e.value)
    assert e.value.key == key


@pytest.mark.parametrize("name", ["..", ".", "a/b", "", ".hidden", "-x", "a b"])
def test_job_name_is_one_plain_folder_name(job, name: str):
    """`..` used to put the job folder outside results_dir."""
    with pytest.raises(SpecError, match=r": name: must match"):
        load_spec(job(), [f"name={name!r}"] if name else ["name=''"])


def test_yaml_alias_bomb_refused_before_expanding(tmp_path: Path, job):
    """Nine levels of 9 aliases would be 387 million strings; refused from the event stream at once."""
    lines = ["name: t", "cluster:", "  sbatch:", "    a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"    a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    path = write(tmp_path / "bomb.yaml", "\n".join(lines) + "\n")
    with pytest.raises(SpecError) as e:
        load_spec(path)
    assert str(path) in str(e.value) and "line 4" in str(e.value) and "aliases" in str(e.value)
    with pytest.raises(SpecError, match="aliases"):
        load_spec(job(), ["cluster.sbatch={a: &x 1, b: *x}"])


def test_quoted_values_are_cut_short(job):
    with pytest.raises(SpecError) as e:
        load_spec(job(f"model: {{pretrained: {'x' * 5000}}}\n"))
    assert "model.pretrained" in str(e.value) and len(str(e.value)) < 600
    with pytest.raises(SpecError) as e:
        load_spec(job(f"train: {{{'k' * 1000}: 1}}\n"))
    assert "train.kkk" in str(e.value) and "unknown key" in str(e.value) and len(str(e.value)) < 600


def test_results_go_to_the_project_not_beside_the_job_file(job, tmp_path: Path, monkeypatch):
    from skinhpc.config import project_dir

    monkeypatch.delenv("SKINHPC_RESULTS", raising=False)
    spec = load_spec(job())
    assert (project_dir() / "setup.cfg").is_file() and (project_dir() / "skinhpc").is_dir()
    assert spec.job_dir == project_dir() / "results" / "t" and spec.cache_dir.parent == project_dir() / "results" / "cache"
    monkeypatch.setenv("SKINHPC_RESULTS", str(tmp_path / "elsewhere"))
    assert load_spec(job()).job_dir == tmp_path / "elsewhere" / "t"
    # a job that sets results_dir keeps it, relative to its own folder
    assert load_spec(job("results_dir: out\n")).job_dir == tmp_path / "out" / "t"
