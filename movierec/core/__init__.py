"""The core every other package stands on: the dataset schema and loaders, synthetic data, splits,
metrics, baselines, configuration and the artifact bundle. It imports nothing of the project above
it; the stages, the serve-time layer, serving and the jobs all import it."""
