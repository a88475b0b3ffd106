"""A saved folder loads with trust_remote_code=True where hf_integration cannot be imported."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from hf_helpers import HEADS, padded_batch, random_tokens, tiny_model

REPO = Path(__file__).resolve().parents[1]

LOADER = r"""
import json, sys
from pathlib import Path

# Simulate a machine without hf_integration, also where it is pip-installed (editable installs
# put it on the path whatever PYTHONPATH says): None in sys.modules makes every import fail.
sys.modules["hf_integration"] = None
try:
    import hf_integration  # noqa: F401
    raise AssertionError("hf_integration must not be importable")
except ImportError:
    pass
import torch, transformers
root = Path(sys.argv[1])
inputs = torch.load(root / "inputs.pt")
for name in json.loads((root / "heads.json").read_text()):
    model = getattr(transformers, name).from_pretrained(root / name, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    with torch.no_grad():
        out = model(**inputs)
    logits = out.last_hidden_state if name == "AutoModel" else out.logits
    torch.save(logits, root / f"{name}.remote.pt")
    if name == "AutoModelForCausalLM":
        generated = model.generate(inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                   max_new_tokens=4, do_sample=False, pad_token_id=0)
        torch.save(generated, root / "generated.remote.pt")
        model.save_pretrained(root / "resaved")  # what push_to_hub would upload again
"""


def test_trust_remote_code_in_fresh_process(tmp_path):
    ids, mask = padded_batch(random_tokens([4, 7]), "left")
    inputs = {"input_ids": ids, "attention_mask": mask}
    torch.save(inputs, tmp_path / "inputs.pt")
    (tmp_path / "heads.json").write_text(json.dumps(list(HEADS)))
    local = {}
    for name, cls in HEADS.items():
        model = tiny_model(cls, bidirectional=name != "AutoModelForCausalLM")
        model.save_pretrained(tmp_path / name)
        with torch.no_grad():
            out = model(**inputs)
        local[name] = out.last_hidden_state if name == "AutoModel" else out.logits
        if name == "AutoModelForCausalLM":
            generated = model.generate(ids, attention_mask=mask, max_new_tokens=4,
                                       do_sample=False, pad_token_id=0)

    # indrnn_triton (pip-installed in real use) is importable; hf_integration is not.
    site = tmp_path / "site"
    site.mkdir()
    (site / "indrnn_triton").symlink_to(REPO / "indrnn_triton")
    (tmp_path / "load.py").write_text(LOADER)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "PYTHONPATH": str(site),
        "HF_HOME": str(tmp_path / "hf_home"),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    result = subprocess.run(
        [sys.executable, str(tmp_path / "load.py"), str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]

    for name in HEADS:
        assert torch.equal(torch.load(tmp_path / f"{name}.remote.pt"), local[name]), name
    assert torch.equal(torch.load(tmp_path / "generated.remote.pt"), generated)
    resaved = json.loads((tmp_path / "resaved" / "config.json").read_text())
    assert set(resaved["auto_map"]) == {"AutoConfig", *HEADS}
    assert (tmp_path / "resaved" / "modeling_indrnn.py").exists()


def test_missing_indrnn_triton_error_says_where_to_get_it(tmp_path):
    """Where the folder is used without indrnn_triton, trust_remote_code loading says how to get
    it (the project's source repository), not transformers' `pip install indrnn_triton`."""
    tiny_model(HEADS["AutoModel"]).save_pretrained(tmp_path / "model")
    loader = (
        "import sys\n"
        "sys.modules['hf_integration'] = sys.modules['indrnn_triton'] = None  # not installed\n"
        "import transformers\n"
        "transformers.AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True)\n"
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", loader, str(tmp_path / "model")], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("ImportError: No module named 'indrnn_triton'"), error
    assert "install it from the project's source repository" in error
    assert "Run `pip install indrnn_triton`" not in result.stderr
