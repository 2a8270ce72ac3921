from conftest import run_cli


def test_version():
    result = run_cli("--version")
    assert result.exit_code == 0
    assert result.stdout.startswith("gmvae ")


def test_trained_model_assigns(trained_model, blobs_csv, blobs):
    import io

    import pandas as pd
    from sklearn.metrics import adjusted_rand_score

    result = run_cli("assign", trained_model, blobs_csv)
    assert result.exit_code == 0, result.stderr
    out = pd.read_csv(io.StringIO(result.stdout))
    assert adjusted_rand_score(blobs[1], out["cluster"]) >= 0.9
