"""The data.augment_on=device figures of `mcl bench`: loader CPU per image, device time per batch, report rows."""

import pytest
import torch

from mcl.bench import report
from mcl.bench.data_rate import pipeline_rates
from mcl.bench.device_aug import cores_for


def test_device_path_rates_and_their_report_rows():
    rates = pipeline_rates(32, (48, 40), 2, distinct=2, device=torch.device("cpu"), device_batch=3)
    dp = rates["device_path"]
    assert dp["canvas_side"] == 64 and dp["batch"] == 3 and dp["device"] == "cpu"
    assert dp["canvas"]["images"] == 2 and dp["canvas"]["images_per_cpu_s"] > 0
    assert dp["augment"]["repeats"] == 3 and dp["augment"]["median_s_per_batch"] > 0
    assert dp["loader_cpu_ms_per_image"] == pytest.approx(1000 / dp["canvas"]["images_per_cpu_s"]
                                                          + dp["sample_ms_per_image"])
    # 64 x 64 uint8 canvas + (h, w) against 8 float32 crops of 32 x 32
    assert dp["host_to_device_bytes_per_image"] == 3 * 64 * 64 + 16
    assert dp["per_image_path_bytes_per_image"] == 8 * 3 * 32 * 32 * 4
    text = report.device_path_section({"data": {"rates": {"32": rates}}})
    assert "augment_on=device" in text and "per image in the loader" in text and "CPU, 1 thread" in text
    assert report.device_path_section({"data": {"rates": {"32": {"crop_size": 32}}}}) == ""


def test_cores_for_is_rate_times_cpu_time():
    assert cores_for(1000.0, 25.0) == pytest.approx(25.0)
    assert cores_for(500.0, None) is None
