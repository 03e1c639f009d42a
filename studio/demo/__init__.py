"""The demo: public images installed packages ship (`data`), the embedded model built from
them (`embedded_model`, checked by `model_quality`), and the demo reader study (`study`)."""
