"""Training: past pages replayed into the page models, and the model directory it writes."""
