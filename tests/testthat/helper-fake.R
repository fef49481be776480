# A hand-built mlnpefit (no Python): y ~ x + (1 + x | g) with three levels, one of them with a space.
fake_fit <- function(ndraws = 100, seed = 1) {
  withr::with_seed(seed, {
    levels <- c("a", "b c", "d")
    vars <- c("b_Intercept", "b_x", "sd_g__Intercept", "sd_g__x", "cor_g__Intercept__x", "sigma",
              sprintf("r_g[%s,Intercept]", c("a", "b.c", "d")), sprintf("r_g[%s,x]", c("a", "b.c", "d")))
    m <- matrix(stats::rnorm(ndraws * length(vars)), ndraws, length(vars), dimnames = list(NULL, vars))
    m[, "b_Intercept"] <- m[, "b_Intercept"] + 10
    m[, c("sd_g__Intercept", "sd_g__x", "sigma")] <- abs(m[, c("sd_g__Intercept", "sd_g__x", "sigma")])
    m[, "cor_g__Intercept__x"] <- tanh(m[, "cor_g__Intercept__x"])
    data <- data.frame(y = stats::rnorm(9), x = stats::rnorm(9), g = rep(levels, each = 3))
  })
  value <- list(
    variables = as.list(vars), shape = list(ndraws, length(vars)), data = as.numeric(m),
    formula = "y ~ 1 + x + (1 + x | g)", group = "g", levels = as.list(levels), x_names = "x",
    z_names = list("Intercept", "x"), aux = "sigma", nobs = 9L,
    diagnostics = list(pareto_k = 0.4, ess = 80, khat_threshold = 0.5, diagnosis = "Good", resampled = FALSE),
    model_path = "/nonexistent/amortizer", from_cache = TRUE,
    groups = list(2L, 5L), rows = list(1L, 5L), train_seconds = 1, network = list(), seconds = 0.01,
    prior_summary = list(prior = c("student_t(3, 0, 2.5)", "normal(0, 1)"), class = c("Intercept", "b"),
                         coef = c("", "x"), group = c("", ""), lb = c("", ""), ub = c("", ""),
                         source = c("default", "user")),
    versions = list(mlnpe = "0.1.0")
  )
  spec <- mlnpe:::formula_spec(y ~ x + (1 + x | g))
  settings <- list(groups = NULL, rows = NULL, network = list(), train = list(), cache = TRUE, psis = TRUE,
                   resample = FALSE)
  mlnpe:::new_mlnpefit(value, spec = spec, data = data, data_name = "fake", family = mlnpe_family("gaussian"),
                       prior = NULL, settings = settings, seed = 1L, call = quote(mlnpe(y ~ x + (1 + x | g))))
}

# A hand-built mlnpefit with two grouping factors: y ~ 1 + (1 | g) + (1 | h), g primary (three levels), h crossed.
fake_crossed_fit <- function(ndraws = 100, seed = 1) {
  withr::with_seed(seed, {
    vars <- c("b_Intercept", "sd_g__Intercept", "sd_h__Intercept", "sigma", "r_h[u,Intercept]", "r_h[v,Intercept]",
              sprintf("r_g[%s,Intercept]", c("a", "b", "d")))
    m <- matrix(stats::rnorm(ndraws * length(vars)), ndraws, length(vars), dimnames = list(NULL, vars))
    m[, 2:4] <- abs(m[, 2:4])
    data <- data.frame(y = stats::rnorm(12), g = rep(c("a", "b", "d"), each = 4), h = rep(c("u", "v"), 6))
  })
  value <- list(
    variables = as.list(vars), shape = list(ndraws, length(vars)), data = as.numeric(m),
    formula = "y ~ 1 + (1 | g) + (1 | h)", group = "g", levels = list("a", "b", "d"), x_names = list(),
    z_names = list("Intercept"), crossed = list(list(group = "h", levels = list("u", "v"), z_names = list("Intercept"))),
    aux = "sigma", nobs = 12L,
    diagnostics = list(pareto_k = 0.4, ess = 80, khat_threshold = 0.5, diagnosis = "Good", resampled = FALSE),
    model_path = "/nonexistent/amortizer", from_cache = TRUE,
    groups = list(2L, 5L), rows = list(1L, 6L), train_seconds = 1, network = list(), seconds = 0.01,
    prior_summary = list(prior = "student_t(3, 0, 2.5)", class = "Intercept", coef = "", group = "", lb = "",
                         ub = "", source = "default"),
    versions = list(mlnpe = "0.1.0")
  )
  spec <- mlnpe:::formula_spec(y ~ 1 + (1 | g) + (1 | h))
  settings <- list(groups = NULL, rows = NULL, network = list(), train = list(), cache = TRUE, psis = TRUE,
                   resample = FALSE)
  mlnpe:::new_mlnpefit(value, spec = spec, data = data, data_name = "fake", family = mlnpe_family("gaussian"),
                       prior = NULL, settings = settings, seed = 1L, call = quote(mlnpe(y ~ 1 + (1 | g) + (1 | h))))
}
