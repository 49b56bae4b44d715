import matplotlib.image as mpimg

from pumpcast.cli import main
from pumpcast.plots import correlation_frame, plot_splits
from pumpcast.splits import make_split
from pumpcast.store import TokenDataManager


def test_plot_command_writes_feature_and_correlation_pictures(synthetic_store, tmp_path):
    assert (
        main(["plot", "--token-range", "0-1", "--data-dir", str(synthetic_store), "--output-dir", str(tmp_path)]) == 0
    )
    for t in (0, 1):
        for name in ("features.png", "correlations.png"):
            img = mpimg.imread(tmp_path / "img" / f"token_{t}" / name)
            assert img.shape[0] > 400 and img.shape[1] > 400


def test_absent_features_are_left_out_of_correlations(binance_dir, tmp_path):
    from pumpcast.ingest import ingest_files

    ingest_files("trades", [binance_dir / "NAS_2022-02-01_15.00.csv.gz"], tmp_path)
    frame = correlation_frame(TokenDataManager(tmp_path).read(0))
    assert list(frame.columns) == ["price log-change", "log1p volume", "log1p buys", "log1p sells"]


def test_split_picture(synthetic_store, tmp_path):
    store = TokenDataManager(synthetic_store)
    lengths = store.lengths()
    path = plot_splits(make_split(lengths, "mixed"), lengths, tmp_path / "splits.png")
    assert mpimg.imread(path).shape[1] > 400
