"""benchmarks/baselines.py's Markdown table: one row per run, grouped by dataset, floors below."""

from benchmarks import baselines


def _run(dataset: str, method: str, **extra) -> dict:
    return {
        "method": method,
        "dataset": dataset,
        "checkpoint_step": 50,
        "batch_size": 128,
        "images_seen": 6400,
        "num_params": {"generator": 1000, "discriminator": 2000},
        "fid": 123.456,
        "sample_img_per_s": 1234.5,
        "last_metrics": {"loss": 1.5, "d_loss": 0.25, "d_real": 0.9, "lr": 2e-4},
        **extra,
    }


def test_table_rows_grouped_by_dataset_with_floors():
    results = {
        "protocol": {"samples": 200},
        "runs": {
            "a_mnist": _run("mnist", "gan", train_wall_s=34.2, train_cpu_s=60.0),
            "b_cifar": _run("cifar10", "dcgan", sample_cpu_ms_per_img=1.25),
            "c_mnist": _run("mnist", "ddpm"),
        },
        "floors": {"mnist": {"fid": 29.05, "inception_img_per_s": 3.7}},
    }
    lines = baselines.table(results).splitlines()
    assert "FID (N=200)" in lines[0]
    rows = [line for line in lines[2:] if line.startswith("| ")]
    assert [r.split(" | ")[1] for r in rows] == ["a_mnist", "c_mnist", "b_cifar"]
    first = rows[0].split(" | ")
    assert first[3] == "discriminator 2,000, generator 1,000"
    assert first[4] == "50 x 128 (6,400)"
    assert (first[5], first[6]) == ("34", "60")  # wall and CPU seconds
    assert first[7] == "123.5"
    assert "lr" not in first[10] and first[10].startswith("loss 1.5")
    assert rows[1].split(" | ")[5:7] == ["n/a", "n/a"]  # not measured: said, not invented
    assert rows[2].split(" | ")[9] == "1.2"  # sampling CPU ms per image
    assert any(line.startswith("- floor mnist: FID 29.1") for line in lines)
